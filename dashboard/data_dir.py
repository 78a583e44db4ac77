"""The hub's data folder (HUB_DATA_DIR) made ready: folders closed to sequence code, the secrets
the hub keeps for itself, the modes of the SQLite file and of `.env`.

Settings only read: this is what writes, run by `manage.py hub_init` (which `make run` and
`make migrate` run first, and `runhub` at every start). A process that starts without the
secrets it needs (`missing_secrets_error`) stops rather than make a key of its own, which the
web and the workers would not share.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def close(path: Path, mode: int) -> bool:
    """Give `path` `mode` when it is there and the hub's user's; True when the mode changed.

    Sequence code runs as another user (HUB_RUN_AS): the hub's own files are closed to it."""
    try:
        info = path.stat()
        if info.st_uid != os.geteuid() or info.st_mode & 0o777 == mode:
            return False
        path.chmod(mode)
    except OSError:
        return False
    return True


def write_secret(path: Path, value: str) -> None:
    """Keep `value` in `path` (0600) unless a secret is there already.

    Written whole under another name, then linked in place: two starts racing (runhub and a
    hub_init, or two containers) both end with the one that won, never an empty file."""
    if not path.exists():
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value)
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
        scratch.unlink()
    close(path, 0o600)


def close_env_file(path: Path) -> bool:
    """`.env` holds the hub's secrets: closed to other users (0600) when it is open to them
    and the hub's user's; True when it was. Settings warn about one left open."""
    try:
        is_open = bool(path.stat().st_mode & 0o077)
    except OSError:
        return False
    return is_open and close(path, 0o600)


def prepare_data_dir() -> bool:
    """Make the data folder settings name ready; safe to run again, at every start.

    True when this process's settings were read before it was: a secret they found missing,
    or a `.env` they found open to other users (and warned about)."""
    data = settings.HUB_DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    # Folders the children must pass through (the data folder, run/, cache/) stay 0711: no
    # listing. Made here with their modes, so that whatever makes them later (an upload's
    # spool in tmp/, say) finds them closed.
    close(data, 0o711)
    for name, mode in (("tmp", 0o700), ("cache", 0o711)):
        (data / name).mkdir(mode=mode, exist_ok=True)
        close(data / name, mode)
    # The package folder (HUB_STORAGE_DIR; none when packages are kept in a bucket): the hub's.
    if settings.HUB_STORAGE_DIR is not None:
        settings.HUB_STORAGE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        close(settings.HUB_STORAGE_DIR, 0o700)

    env_closed = close_env_file(settings.BASE_DIR / ".env")
    # Beat's schedule (its files, made 0644 before beat ran with a umask of its own): the hub's.
    for path in Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).parent.glob(
        Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).name + "*"
    ):
        close(path, 0o600)

    if settings.SECRET_KEY_FILE is not None:
        write_secret(settings.SECRET_KEY_FILE, secrets.token_urlsafe(50))
    if settings.HUB_EMBEDDED_REDIS:
        with contextlib.suppress(FileExistsError):
            settings.EMBEDDED_REDIS_DIR.mkdir(mode=0o700)
        close(settings.EMBEDDED_REDIS_DIR, 0o700)
        write_secret(settings.EMBEDDED_REDIS_PASSWORD_FILE, secrets.token_hex(32))

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # SQLite gives its -wal and -shm files the database file's mode: 0600 for all three.
        db_file = Path(db["NAME"])
        with contextlib.suppress(FileExistsError):
            db_file.touch(mode=0o600, exist_ok=False)
        for suffix in ("", "-wal", "-shm"):
            close(Path(f"{db_file}{suffix}"), 0o600)
    return bool(settings.HUB_MISSING_SECRETS) or env_closed


def missing_secrets_error() -> ImproperlyConfigured | None:
    """Why a process that serves the hub (web, worker, beat) cannot start, if it cannot."""
    missing = settings.HUB_MISSING_SECRETS
    if not missing:
        return None
    return ImproperlyConfigured(
        f"{' and '.join(str(path) for path in missing)} not there: run "
        "`python manage.py hub_init` once (make run does), or set SECRET_KEY (and REDIS_URL) "
        "in the environment."
    )
