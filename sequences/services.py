"""The hub's own services that listen on TCP (Redis, the broker, the database), read from the
settings: the ports the workers close to sequence code (runner/launch.py) and the ones the
overview warns about when they take no password (dashboard/exposure.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}
DEFAULT_DB_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True)
class TcpService:
    port: int
    what: str  # "Redis at host:port", "the database at host:port"
    password: bool  # whether the hub connects with one


def has_password(db: dict) -> bool:
    """A database password in the settings, or where libpq finds one by itself."""
    options = db.get("OPTIONS") or {}
    return bool(
        db.get("PASSWORD")
        or options.get("passfile")
        or os.environ.get("PGPASSWORD")
        or os.environ.get("PGPASSFILE")
    )


def tcp_services() -> list[TcpService]:
    found = []
    for url in dict.fromkeys([settings.REDIS_URL, getattr(settings, "CELERY_BROKER_URL", "")]):
        parts = urlsplit(url or "")
        if parts.scheme in DEFAULT_PORTS and parts.hostname:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
            kind = "Redis" if parts.scheme.startswith("redis") else "the broker"
            found.append(
                TcpService(port, f"{kind} at {parts.hostname}:{port}", bool(parts.password))
            )
    for db in settings.DATABASES.values():
        host = str(db.get("HOST") or "")
        engine = db.get("ENGINE", "").rsplit(".", 1)[-1]
        if engine != "sqlite3" and host and not host.startswith("/"):
            port = int(db.get("PORT") or DEFAULT_DB_PORTS.get(engine, 5432))
            found.append(TcpService(port, f"the database at {host}:{port}", has_password(db)))
    return found
