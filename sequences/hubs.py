"""The hub's id, and the other hubs on its Redis.

Everything a hub keeps in Redis is under `hub:<hub id>:` (`live.key`). The id is made at the
hub's first start (by `hub_init`, or by the first process that needs it) and kept in the
database (`HubIdentity`): the web and worker processes of one hub may run on several machines
and share only the database and Redis, not a data folder. HUB_ID, when set, is used instead
(every process of the hub must then be given the same).

Each hub also says in the registry hash `live.REGISTRY` that it is alive: its workers at each
heartbeat, its web and runhub at start. A process that starts reads the registry first and
warns when another live hub uses the same Redis database (`shared_redis_warnings`): the two do
not mix, but they share Redis's memory and its FLUSHDB, which is seldom what was meant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from redis.exceptions import RedisError

from sequences import live

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import redis.asyncio as aredis

log = logging.getLogger(__name__)

# How long a hub's registry entry says it is alive without a new beat: several of the workers'
# heartbeats (every HUB_LOST_AFTER / 4 s), and at least a minute.
MIN_ALIVE_FOR = 60.0


def new_hub_id() -> str:
    return secrets.token_hex(6)


def load_hub_id() -> str:
    """HUB_ID, or the id kept in the database (made there the first time): for `live.hub_id`,
    which keeps it for the process."""
    configured = str(getattr(settings, "HUB_ID", "") or "")
    if configured:
        if not live.HUB_ID_PATTERN.fullmatch(configured):
            raise ImproperlyConfigured(
                f"HUB_ID {configured!r} is not 1 to 40 letters, digits, '-' or '_'"
            )
        return configured
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _from_database()
    # The ORM refuses to run on an event loop's thread: a thread asks, once per process.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_from_database_in_thread).result()


def _from_database() -> str:
    from sequences.models import HubIdentity

    try:
        # The one row, made by whichever process comes first; a second one racing it finds
        # the key taken and reads the row the first made.
        row, _ = HubIdentity.objects.get_or_create(key=1, defaults={"hub_id": new_hub_id()})
    except DatabaseError as exc:
        raise ImproperlyConfigured(
            f"The hub's id could not be read from the database ({str(exc).strip()}): is the "
            "database reachable, and migrated? Run `python manage.py hub_init` (it applies the "
            "migrations and makes the id) before starting the web or a worker."
        ) from exc
    return row.hub_id


def _from_database_in_thread() -> str:
    try:
        return _from_database()
    finally:
        connections.close_all()


# -- the registry ------------------------------------------------------------------------------


def alive_for() -> float:
    return max(MIN_ALIVE_FOR, 4 * float(settings.HUB_LOST_AFTER))


def _database_label() -> str:
    """Which database this hub keeps, as other hubs are told it (no password)."""
    db = settings.DATABASES["default"]
    engine = str(db["ENGINE"]).rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite3 {db['NAME']}"
    where = f"{db.get('HOST') or 'the local socket'}"
    if db.get("PORT"):
        where += f":{db['PORT']}"
    return f"{engine} {db.get('NAME')} at {where}"


def registry_entry(now: float | None = None) -> tuple[str, str]:
    """This hub's field and value in the registry hash."""
    now = time.time() if now is None else now
    value = {
        "lapses": round(now + alive_for(), 3),
        "host": socket.gethostname(),
        "database": _database_label(),
    }
    return live.hub_id(), json.dumps(value, separators=(",", ":"))


def announce() -> None:
    """Say in the registry that this hub is alive (web and runhub at start); a Redis that does
    not answer is not this function's to report."""
    try:
        live.sync_client().hset(live.REGISTRY, *registry_entry())
    except RedisError as exc:
        log.warning("could not write the hub registry: %s", exc)


async def announce_async(client: aredis.Redis) -> None:
    """The same from a worker's heartbeat."""
    await cast("Awaitable[int]", client.hset(live.REGISTRY, *registry_entry()))


def other_hubs(entries: dict[bytes, bytes], now: float) -> list[dict[str, Any]]:
    """The live registry entries of other hubs, and of a hub that uses this hub's id with
    another database: `{id, host, database, seen, same_id}`, `seen` in seconds ago."""
    ours = live.hub_id()
    database = _database_label()
    found = []
    for field, raw in entries.items():
        try:
            value = json.loads(raw)
            lapses = float(value["lapses"])
        except (ValueError, KeyError, TypeError):
            continue
        name = field.decode(errors="replace")
        if lapses < now or (name == ours and value.get("database") == database):
            continue
        found.append(
            {
                "id": name,
                "host": str(value.get("host", "?")),
                "database": str(value.get("database", "?")),
                "seen": max(0, round(now - (lapses - alive_for()))),
                "same_id": name == ours,
            }
        )
    return found


def _redis_where() -> str:
    parts = urlsplit(settings.REDIS_URL)
    if parts.scheme == "unix" or parts.scheme.endswith("+socket"):
        return f"the socket {parts.path}"
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}, database {db}"


def shared_redis_warnings() -> list[str]:
    """A sentence for each other live hub on this Redis database, saying what to do; none when
    Redis does not answer (the hub's other checks say so)."""
    try:
        client = live.sync_client()
        entries = cast("dict[bytes, bytes]", client.hgetall(live.REGISTRY))
    except RedisError:
        return []
    now = time.time()
    lapsed = [f for f, v in entries.items() if _lapsed(v, now)]
    if lapsed:
        # Keeps the registry as small as the number of live hubs.
        with contextlib.suppress(RedisError):
            client.hdel(live.REGISTRY, *lapsed)
    found = []
    where = _redis_where()
    for hub in other_hubs(entries, now):
        seen = f"{hub['database']} on {hub['host']}, seen {hub['seen']} s ago"
        if hub["same_id"]:
            found.append(
                f"Another hub uses this hub's id {hub['id']} on the same Redis ({where}) with "
                f"another database ({seen}): the two share every key and take each other's "
                "starts. A copied database keeps its hub's id: give one of them a new one "
                "(HUB_ID), or another Redis database."
            )
        else:
            found.append(
                f"Redis ({where}) is shared with another hub, {hub['id']} ({seen}). Their "
                "keys do not mix (each hub's are under hub:<its id>:), but they share Redis's "
                "memory, and a FLUSHDB by either empties both: give each hub a Redis database "
                "of its own (REDIS_URL ending /1, /2, ...) unless this is meant."
            )
    return found


def _lapsed(raw: bytes, now: float) -> bool:
    try:
        return float(json.loads(raw)["lapses"]) < now - alive_for()
    except (ValueError, KeyError, TypeError):
        return True


def at_start() -> list[str]:
    """For a process of the hub as it starts (web, worker, runhub): read the hub id (a clear
    error when the database cannot give it), look for other hubs on the same Redis, then say
    this one is alive. The warnings, for the caller to show."""
    live.hub_id()
    warnings = shared_redis_warnings()
    announce()
    return warnings
