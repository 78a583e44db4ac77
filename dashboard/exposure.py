"""Whether sequence code could reach the hub's Redis or database without credentials.

Sequence code runs on the worker's machine, so anything the hub reaches over the network
without a password, its children may reach too: Redis would let them forge starts and control
messages, read every stream and flush it all; a database that trusts local connections would
let them rewrite anything. `exposure_warnings()` names each such hole in the configuration and
how to close it; `runhub` prints them, the web process logs them when it starts and the
overview shows them to admins. It judges the configuration only: it does not connect.
"""

from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from sequences.models import Worker
from sequences.services import has_password, tcp_services

NETWORK_FIX = "HUB_SANDBOX_NETWORK=isolated (no network for sequence code)"


def _network_closed() -> bool:
    """TCP services are out of reach of children: they get no network at all, or the workers'
    Landlock layer closes the ports of the hub's services, which it does when children run as
    user ids of their own (a root worker, HUB_RUN_AS=auto: runner/landlock.py says why only
    then). Unix sockets, which are files, are not closed either way. Judged from this
    process's user, as the hub's processes run as one; whether each worker really closed them
    is what it reports in its row: `worker_warnings()`."""
    if settings.HUB_SANDBOX_NETWORK == "isolated":
        return True
    return settings.HUB_SANDBOX and settings.HUB_RUN_AS == "auto" and os.geteuid() == 0


def _open_tcp_services() -> dict[int, str]:
    """Port -> what listens there, for the hub's services reachable over TCP without a
    password: the ports a worker must close to its children."""
    return {s.port: s.what for s in tcp_services() if not s.password}


def worker_warnings() -> list[str]:
    """Workers whose children are less confined than the configuration assumes: no Landlock
    (then the hub's files are closed only by user ids, and only when the worker is root), or
    the port of a password-less service of the hub left open."""
    recent = timezone.now() - timedelta(seconds=max(60, 4 * settings.HUB_LOST_AFTER))
    services = _open_tcp_services()
    found = []
    for worker in Worker.objects.filter(stopped__isnull=True, last_seen__gte=recent):
        report = worker.sandbox or {}
        if not report:
            continue  # a worker from before sandbox reports
        problems = []
        if "REFUSED" in str(report.get("summary", "")):
            # runner/launch.py: a root worker that would run sequence code as root.
            found.append(
                f"Worker {worker.name}: it refuses every start, since its children would run "
                "as root. Set HUB_RUN_AS=auto (a user id per instance) or an ordinary user's "
                "name for it."
            )
        if not report.get("landlock"):
            problems.append("it has no Landlock, so its children are confined by user ids only")
        if report.get("network") != "isolated":
            closed = set(report.get("closed_ports") or [])
            problems += [
                f"its children can connect to {what}"
                for port, what in services.items()
                if port not in closed
            ]
        if problems:
            found.append(
                f"Worker {worker.name}: {'; '.join(problems)} ({report.get('summary', '')}). "
                "Run workers on Linux 5.13+ with Landlock enabled, and give the hub's Redis "
                "and database passwords."
            )
    return found


def _redis_warning(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return None
    unix = parts.scheme == "unix" or parts.scheme.endswith("+socket")
    if unix:
        return (
            f"Redis on the socket {parts.path} takes commands without a password: sequence "
            "code that may open that socket can take the hub over. Set a password in "
            "REDIS_URL (unix://:PASSWORD@/path/redis.sock?db=0), or leave REDIS_URL unset "
            "so the hub runs its own Redis with a generated password."
        )
    if _network_closed():
        return None
    where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    return (
        f"Redis at {where} takes commands without a password: sequence code can connect to "
        "it and take the hub over. Set a password in REDIS_URL "
        f"(redis://:PASSWORD@{where}/0), leave REDIS_URL unset so the hub runs its own Redis "
        f"with a generated password, or set {NETWORK_FIX}."
    )


def _database_warning(db: dict) -> str | None:
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    # SQLite is a file, closed to sequence code by its permissions.
    if engine == "sqlite3" or has_password(db):
        return None
    host = str(db.get("HOST") or "")
    socket = not host or host.startswith("/")
    if not socket and _network_closed():
        return None
    where = f"the socket in {host or 'the default folder'}" if socket else host
    fix = "Set a password in DATABASE_URL (postgres://USER:PASSWORD@host:5432/hub) and make "
    fix += "the server require it (pg_hba.conf: scram-sha-256, not trust or peer)"
    fix += "." if socket else f", or set {NETWORK_FIX}."
    return (
        f"The database ({engine} at {where}) is configured without a password: if the server "
        f"trusts local connections, sequence code can connect to it. {fix}"
    )


def exposure_warnings() -> list[str]:
    """Plain sentences, one per problem, each saying how to fix it; empty when all is closed."""
    found = list(getattr(settings, "HUB_SETTINGS_WARNINGS", []))
    urls = dict.fromkeys([settings.REDIS_URL, getattr(settings, "CELERY_BROKER_URL", "")])
    for url in urls:
        if url and urlsplit(url).scheme.startswith(("redis", "unix")):
            warning = _redis_warning(url)
            if warning and warning not in found:
                found.append(warning)
    for db in settings.DATABASES.values():
        warning = _database_warning(db)
        if warning and warning not in found:
            found.append(warning)
    warning = _proxy_warning()
    if warning:
        found.append(warning)
    return found


def _proxy_warning() -> str | None:
    """A trusted proxy on the workers' own machine: sequence code connects from there too,
    and its X-Forwarded-For would be believed (a made-up address per login guess)."""
    import ipaddress

    if settings.HUB_SANDBOX_NETWORK == "isolated":
        return None
    local = [
        entry
        for entry in settings.HUB_TRUSTED_PROXIES
        if ipaddress.ip_network(entry, strict=False).is_loopback
    ]
    if not local:
        return None
    return (
        f"HUB_TRUSTED_PROXIES trusts {', '.join(local)}: sequence code on a worker's machine "
        "connects from there too, and could choose the address the login limit counts it "
        "under. Trust the proxy's own non-loopback address, run the workers on other "
        f"machines, or set {NETWORK_FIX}."
    )
