"""Stopping the hub's own subprocesses (web, worker, beat, Redis) politely, then firmly."""

import contextlib
import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL its whole process group.

    The group, because each piece is started in a session of its own with children (a worker's
    fork server and instances) that must not outlive it.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
