from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from accounts.access import audit_hub_event
        from accounts.identity import on_change
        from accounts.models import ApiToken
        from sequences.hub_events import hub_event

        user_model = get_user_model()
        # Whatever could change who a token is or what they may do.
        for model in (ApiToken, user_model, Group):
            post_save.connect(on_change, sender=model, dispatch_uid=f"identity-save-{model}")
            post_delete.connect(on_change, sender=model, dispatch_uid=f"identity-del-{model}")
        m2m_changed.connect(
            on_change, sender=user_model.groups.through, dispatch_uid="identity-groups"
        )
        # Open console pages re-check their session when the counter moves.
        user_logged_out.connect(on_change, dispatch_uid="identity-logout")
        # What the hub does by itself (worker lost or shut down, restart policies): the domain
        # and the runner announce it, the audit log is written here.
        hub_event.connect(audit_hub_event, dispatch_uid="audit-hub-events")
