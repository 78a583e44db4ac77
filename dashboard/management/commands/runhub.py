"""`python manage.py runhub`: web, worker, beat (and an embedded Redis) as one supervised group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from dashboard.data_dir import prepare_data_dir
from dashboard.exposure import exposure_warnings
from dashboard.processes import (
    RedisDidNotStart,
    die_with_parent,
    private_files,
    start_redis,
    stop_process,
    web_argv,
    worker_argv,
)
from sequences import hubs, live


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
        if prepare_data_dir():
            # This process read settings before the data folder had its secrets (a first
            # start) or while .env was open: start again, so that runhub itself (the embedded
            # Redis's password, the warnings below) reads what its pieces will read.
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, sys.orig_argv)
        call_command("hub_init", verbosity=0)
        for warning in exposure_warnings():
            self.stderr.write(self.style.WARNING(f"WARNING: {warning}"))
        # The pieces read the hub id from the database themselves, as on other machines.
        shared = hubs.at_start() if not settings.HUB_EMBEDDED_REDIS else []
        for warning in shared:
            self.stderr.write(self.style.WARNING(f"WARNING: {warning}"))
        procs: dict[str, subprocess.Popen] = {}
        # The web, worker and beat find the embedded Redis and its password from settings
        # themselves: REDIS_URL stays out of their environment.
        env = dict(os.environ)
        if settings.HUB_EMBEDDED_REDIS:
            try:
                procs["redis"] = start_redis(
                    settings.EMBEDDED_REDIS_DIR,
                    sock=settings.EMBEDDED_REDIS_SOCKET,
                    password=settings.EMBEDDED_REDIS_PASSWORD,
                )
            except RedisDidNotStart as exc:
                raise CommandError(str(exc)) from None
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
            preexec = die_with_parent()
            procs[name] = subprocess.Popen(
                argv,
                env=env,
                start_new_session=True,
                preexec_fn=private_files(preexec) if name == "beat" else preexec,
            )
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        self.stdout.write(self.style.SUCCESS(f"Sequence Hub is running at http://{shown}:{port}/"))
        self.stdout.write(f"Hub id: {live.hub_id()} (its Redis keys are under {live.key('')})")
        self.stdout.write(f"API: http://{shown}:{port}/api/v1/  (docs at /api/v1/docs)")
        self.stdout.write(
            "Log in with the admin account printed when it was created "
            "(reset it with: .venv/bin/python manage.py changepassword admin). "
            "Press Ctrl-C to stop."
        )
        self._supervise(procs, commands["worker"], env)

    def _supervise(
        self, procs: dict[str, subprocess.Popen], worker: list[str], env: dict[str, str]
    ) -> None:
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        failed = None
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is None:
                    continue
                if name == "worker" and _drained(proc.pid):
                    # `si worker drain`: a rolling restart of this hub's worker.
                    self.stdout.write("The worker was drained: starting its replacement")
                    procs["worker"] = subprocess.Popen(
                        worker, env=env, start_new_session=True, preexec_fn=die_with_parent()
                    )
                    continue
                failed = f"{name} exited with code {proc.returncode}"
                stopping = True
            time.sleep(0.3)
        if failed:
            self.stderr.write(f"Stopping the hub: {failed}")
        # Worker first so it records its instances' ends; Redis last.
        for name in ("web", "beat", "worker", "redis"):
            if name in procs:
                stop_process(procs[name])
        self.stdout.write("Sequence Hub stopped.")
        if failed:
            sys.exit(1)


def _drained(pid: int) -> bool:
    """Whether the worker process `pid` of this machine exited after a drain (it recorded so
    before it exited)."""
    from django.db import close_old_connections

    from sequences.models import Worker

    close_old_connections()
    try:
        return Worker.objects.filter(
            pid=pid, hostname=socket.gethostname(), drained__isnull=False
        ).exists()
    except Exception:
        return False
