"""Who may do what: roles, bearer tokens, the anonymous role, and the audit log."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, Group
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import ApiToken, AuditEntry, hash_token
from core.db_threads import db_call, in_background

ROLES = ("viewer", "operator", "admin")
RANK = {"none": 0, "viewer": 1, "operator": 2, "admin": 3}


def ensure_groups() -> None:
    for name in ROLES:
        Group.objects.get_or_create(name=name)


def user_role(user: Any) -> str:
    """The highest role a user holds; an authenticated user with no group may read."""
    if user is None or not user.is_authenticated:
        return settings.HUB_ANONYMOUS_ROLE
    # Set by a token with a role of its own (user_from_token): it caps even a superuser.
    cached = getattr(user, "_hub_role", None)
    if cached:
        return cached
    if user.is_superuser:
        return "admin"
    names = set(user.groups.values_list("name", flat=True))
    role = next((r for r in reversed(ROLES) if r in names), "viewer")
    user._hub_role = role
    return role


def has_role(user: Any, needed: str) -> bool:
    return RANK[user_role(user)] >= RANK[needed]


def user_from_token(raw: str) -> Any | None:
    """The user a live token acts as (None: unknown, revoked, lapsed, or its owner
    deactivated), with the token's role cap applied to that user object."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_token(raw), revoked__isnull=True, user__is_active=True)
        .first()
    )
    now = timezone.now()
    if token is None or token.lapsed(now):
        return None
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    user: Any = token.user  # carries the two notes below for this request only
    user._hub_token_expires = token.expires  # identity.py remembers it no longer than that
    if token.role in RANK and RANK[token.role] < RANK[user_role(user)]:
        user._hub_role = token.role
    return user


class AccessError(ValueError):
    """A change to users or tokens that is not allowed; the message says why."""


def issue_token(
    owner: Any, name: str, expires: datetime | None = None, role: str = ""
) -> tuple[ApiToken, str]:
    """A new token of `owner`'s, lapsing at `expires`, acting with at most `role` ("" for
    the owner's own). A token never holds more than its owner: that is refused."""
    if role and role not in ROLES:
        raise AccessError(f"role must be one of {', '.join(ROLES)} (or empty), not {role!r}")
    if role and RANK[role] > RANK[user_role(owner)]:
        raise AccessError(
            f"a token may not hold more than its owner: {owner.get_username()} is "
            f"{user_role(owner)}, the token asked for {role}"
        )
    if expires is not None and expires <= timezone.now():
        raise AccessError("expires must be in the future")
    return ApiToken.issue(owner, name, expires=expires, role=role)


def set_role(user: Any, role: str) -> None:
    """Make `role` the user's one hub role (its group); the identity cache hears of it through
    the group-membership signal."""
    if role not in ROLES:
        raise AccessError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if user_role(user) == "admin" and role != "admin" and _last_admin(user):
        raise AccessError(f"{user.get_username()} is the last active admin: make another first")
    others = user.groups.filter(name__in=ROLES).exclude(name=role)
    user.groups.remove(*others)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    if user.is_superuser and role != "admin":
        # A superuser is admin whatever its groups say: a lower role needs that taken away.
        user.is_superuser = False
        user.is_staff = False
        user.save(update_fields=["is_superuser", "is_staff"])
    user.__dict__.pop("_hub_role", None)


def set_active(user: Any, active: bool, by: Any) -> None:
    """Deactivate (log-ins and tokens refused, history kept) or reactivate a user."""
    if not active and user.pk == getattr(by, "pk", None):
        raise AccessError("you cannot deactivate yourself")
    if not active and user_role(user) == "admin" and _last_admin(user):
        raise AccessError(f"{user.get_username()} is the last active admin: make another first")
    user.is_active = active
    user.save(update_fields=["is_active"])


def _last_admin(user: Any) -> bool:
    """Whether `user` is the only active user holding the admin role."""
    model = type(user)
    admins = model.objects.filter(is_active=True).filter(
        Q(is_superuser=True) | Q(groups__name="admin")
    )
    return not admins.exclude(pk=user.pk).exists()


def bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def request_user(request: HttpRequest) -> Any:
    """The session user, or the bearer token's user; AnonymousUser when neither."""
    raw = bearer(request)
    if raw:
        return user_from_token(raw) or AnonymousUser()
    return getattr(request, "user", None) or AnonymousUser()


def role_context(request: HttpRequest) -> dict[str, Any]:
    role = user_role(getattr(request, "user", None))
    return {
        "hub_role": role,
        "can_operate": RANK[role] >= RANK["operator"],
        "can_admin": RANK[role] >= RANK["admin"],
    }


def actor_name(user: Any) -> str:
    return user.get_username() if user is not None and user.is_authenticated else "anonymous"


def _entry(user: Any, action: str, target: str, outcome: str, via: str, detail: Any) -> AuditEntry:
    return AuditEntry(
        user=user if user is not None and user.is_authenticated else None,
        actor=actor_name(user),
        action=action,
        target=str(target)[:200],
        outcome=outcome,
        via=via,
        detail=detail,
    )


def audit(
    user: Any,
    action: str,
    target: str = "",
    outcome: str = "ok",
    via: str = "web",
    **detail: Any,
) -> None:
    _entry(user, action, target, outcome, via, detail).save()


HUB_ACTOR = "hub"  # the actor of what the hub did by itself (no user asked)


def audit_hub_event(
    sender: object,
    action: str,
    target: str,
    detail: dict[str, Any],
    actor: str | None = None,
    via: str = "hub",
    outcome: str = "ok",
    **_: Any,
) -> None:
    """The receiver of sequences.hub_events: one audit entry, by the hub, via "hub" (or by
    a sequencer, via "sequencer", when a script commanded another sequencer)."""
    AuditEntry.objects.create(
        user=None,
        actor=(actor or HUB_ACTOR)[:150],
        action=action[:60],
        target=str(target)[:200],
        outcome=outcome[:20],
        via=via[:10],
        detail=detail,
    )


AUDIT_BATCH_SECONDS = 0.05
_pending: list[AuditEntry] = []


def audit_soon(
    user: Any,
    action: str,
    target: str = "",
    outcome: str = "ok",
    via: str = "web",
    **detail: Any,
) -> None:
    """`audit` for the hot async routes: the entry is written within AUDIT_BATCH_SECONDS,
    in one insert with the others made meanwhile, after the request has answered. (A web
    process killed in that moment loses them.)"""
    _pending.append(_entry(user, action, target, outcome, via, detail))
    if len(_pending) == 1:
        in_background(_write_pending())


async def _write_pending() -> None:
    await asyncio.sleep(AUDIT_BATCH_SECONDS)
    batch = _pending[:]
    _pending.clear()
    await db_call(AuditEntry.objects.bulk_create, batch)
