"""Who may do what: roles, bearer tokens, the anonymous role, and the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, Group
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
    if user.is_superuser:
        return "admin"
    cached = getattr(user, "_hub_role", None)
    if cached:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = next((r for r in reversed(ROLES) if r in names), "viewer")
    user._hub_role = role
    return role


def has_role(user: Any, needed: str) -> bool:
    return RANK[user_role(user)] >= RANK[needed]


def user_from_token(raw: str) -> Any | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_token(raw), revoked__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user


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
    sender: object, action: str, target: str, detail: dict[str, Any], **_: Any
) -> None:
    """The receiver of sequences.hub_events: one audit entry, by the hub, via "hub"."""
    AuditEntry.objects.create(
        user=None,
        actor=HUB_ACTOR,
        action=action,
        target=str(target)[:200],
        via="hub",
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
