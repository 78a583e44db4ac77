"""Who holds a bearer token, and their role, without two queries on every API request.

Each web process remembers what it looked up. Anything that could change an answer (a token,
a user or a group membership saved or deleted, a logout) bumps a counter in Redis, at once and
again when its transaction commits, and a process forgets everything it remembered when it sees
the counter move. Reading the counter is one Redis GET per request, so a revoked token is
refused at once by every process. Without Redis the cache is off and every request asks the
database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from accounts.access import user_from_token, user_role
from accounts.models import hash_token
from core.db_threads import db_call
from sequences import live

# A remembered token is looked up again after this long, which also keeps its last_used fresh.
REMEMBER_SECONDS = 30.0
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Identity:
    user: Any
    role: str
    looked_up: float
    lapses: float = float("inf")  # monotonic time the token expires: not remembered past it


_remembered: dict[str, Identity] = {}
_generation: bytes | None = None


def _lookup(raw: str) -> Identity | None:
    user = user_from_token(raw)
    if user is None:
        return None
    now = time.monotonic()
    expires = getattr(user, "_hub_token_expires", None)
    lapses = now + (expires - timezone.now()).total_seconds() if expires else float("inf")
    return Identity(user=user, role=user_role(user), looked_up=now, lapses=lapses)


# After a failed read, the counter is not asked for this long: while Redis is away, requests
# go straight to the database instead of each waiting out the client's retries.
REDIS_PAUSE_SECONDS = 1.0
_redis_failed_at = -REDIS_PAUSE_SECONDS


def _redis_paused() -> bool:
    return time.monotonic() - _redis_failed_at < REDIS_PAUSE_SECONDS


def _redis_failed() -> None:
    global _redis_failed_at
    _redis_failed_at = time.monotonic()


async def current_generation() -> bytes | None:
    """The counter's value, or None when Redis does not answer."""

    if _redis_paused():
        return None
    try:
        return live.as_bytes(await live.async_client().get(live.auth_generation_key())) or b"0"
    except (RedisError, OSError):
        _redis_failed()
        return None


def _current_generation_sync() -> bytes | None:

    if _redis_paused():
        return None
    try:
        return live.as_bytes(live.sync_client().get(live.auth_generation_key())) or b"0"
    except (RedisError, OSError):
        _redis_failed()
        return None


def _recall(digest: str, current: bytes | None) -> Identity | None:
    """What this process remembers of a token, if the counter has not moved since."""
    global _generation
    if current is None or current != _generation:
        _remembered.clear()
        _generation = current
    known = _remembered.get(digest)
    now = time.monotonic()
    if known is not None and now - known.looked_up < REMEMBER_SECONDS and now < known.lapses:
        return known
    return None


def _remember(digest: str, found: Identity | None, current: bytes | None) -> None:
    # Only if nothing changed while the database was asked: a revocation that landed meanwhile
    # moved the counter, and this answer may predate it.
    if found is not None and current is not None and current == _generation:
        if len(_remembered) >= MAX_REMEMBERED:
            _remembered.clear()
        _remembered[digest] = found


async def identity_for_token(raw: str) -> Identity | None:
    """The token's user and role, or None for an unknown, revoked or inactive user's token."""
    current, digest = await current_generation(), hash_token(raw)
    known = _recall(digest, current)
    if known is not None:
        return known
    found = await db_call(_lookup, raw)
    _remember(digest, found, current)
    return found


def identity_for_token_sync(raw: str) -> Identity | None:
    """The same, for sync routes (which Django runs in a thread)."""
    current, digest = _current_generation_sync(), hash_token(raw)
    known = _recall(digest, current)
    if known is not None:
        return known
    found = _lookup(raw)
    _remember(digest, found, current)
    return found


def bump_generation() -> None:
    """Every web process forgets the tokens it remembered: now, and again once the current
    transaction commits (a process that looked the token up in between saw the old row)."""
    _bump_now()
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(_bump_now)


def _bump_now() -> None:

    try:
        live.sync_client().incr(live.auth_generation_key())
    except (RedisError, OSError):
        # A cache that missed the change would keep serving it, so no cache at all until
        # Redis answers again: identity_for_token finds no counter and asks the database.
        _remembered.clear()


def on_change(sender: Any, **kwargs: Any) -> None:
    """Receiver for the model signals wired in DashboardConfig.ready."""
    if kwargs.get("update_fields") == frozenset({"last_login"}):
        return  # every login saves the user: nothing a token's answer depends on
    bump_generation()
