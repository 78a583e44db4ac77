"""Page routes of the console (the API lives under /api/v1, WebSockets under /ws/)."""

from django.urls import path

from dashboard.views import (
    access_pages,
    auth,
    components,
    instances,
    modes,
    overview,
    sequencers,
    sequences,
    topics,
    workers,
)

urlpatterns = [
    path("login/", auth.login_view, name="login"),
    path("logout/", auth.logout_view, name="logout"),
    path("", overview.overview, name="overview"),
    # sequences
    path("sequences/", sequences.sequence_list, name="sequences"),
    path("sequences/upload/", sequences.sequence_upload, name="sequence-upload"),
    path("sequences/<str:seq_id>/", sequences.sequence_detail, name="sequence"),
    path("sequences/<str:seq_id>/start/", sequences.sequence_start, name="sequence-start"),
    path("sequences/<str:seq_id>/delete/", sequences.sequence_delete, name="sequence-delete"),
    # instances
    path("instances/", instances.instance_list, name="instances"),
    path("instances/<str:iid>/", instances.instance_detail, name="instance"),
    path("instances/<str:iid>/search/", instances.log_search, name="instance-search"),
    path(
        "instances/<str:iid>/log/<str:stream>/earlier/",
        instances.log_earlier,
        name="instance-log-earlier",
    ),
    path(
        "instances/<str:iid>/log/<str:stream>/download/",
        instances.log_download,
        name="instance-log-download",
    ),
    path("instances/<str:iid>/input/", instances.instance_input, name="instance-input"),
    path("instances/<str:iid>/event/", instances.instance_event, name="instance-event"),
    path("instances/<str:iid>/stop/", instances.instance_stop, name="instance-stop"),
    path("instances/<str:iid>/kill/", instances.instance_kill, name="instance-kill"),
    # access
    path("audit/", access_pages.audit_log, name="audit"),
    path("tokens/", access_pages.tokens, name="tokens"),
    path("tokens/new/", access_pages.token_create, name="token-create"),
    path("tokens/<int:token_id>/revoke/", access_pages.token_revoke, name="token-revoke"),
    path("users/", access_pages.users, name="users"),
    path("users/new/", access_pages.user_create, name="user-create"),
    path("users/<int:user_id>/role/", access_pages.user_role_change, name="user-role"),
    path("users/<int:user_id>/active/", access_pages.user_active, name="user-active"),
]

urlpatterns += [
    # sequencers
    path("sequencers/", sequencers.sequencer_list, name="sequencers"),
    path("sequencers/<str:ident>/", sequencers.sequencer_detail, name="sequencer"),
    path(
        "sequencers/<str:ident>/command/<str:name>/",
        sequencers.sequencer_command,
        name="sequencer-command",
    ),
    # sequence components
    path("components/", components.component_list, name="components"),
    path("components/new/", components.component_create, name="component-create"),
    path(
        "components/<str:name>/<str:action>/",
        components.component_action,
        name="component-action",
    ),
    # observing modes
    path("observations/", modes.observations, name="observations"),
    path("observations/config/", modes.config_save, name="modes-config"),
    path("observations/sequencer/<str:prefix>/restart/", modes.mode_restart, name="mode-restart"),
    path("observations/<str:name>/<str:action>/", modes.mode_action, name="mode-action"),
    path("resources/", modes.resources_page, name="resources"),
    # topics
    path("topics/", topics.topic_list, name="topics"),
    path("topics/<str:name>/", topics.topic_detail, name="topic"),
    path("topics/<str:name>/delete/", topics.topic_delete, name="topic-delete"),
    # workers
    path("workers/", workers.worker_list, name="workers"),
    path("workers/<str:name>/drain/", workers.worker_drain, name="worker-drain"),
]
