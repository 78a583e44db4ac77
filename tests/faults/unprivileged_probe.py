"""Run by test_sandbox_unprivileged.py as an ordinary user: a fork server confined as the hub
confines it, one hostile child, and a JSON report of what the child could do.

`python -m tests.faults.unprivileged_probe WORKDIR` with the checkout on PYTHONPATH. It imports
only the runner (standard library) and the test harness, as a worker's fork server would.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from runner import isolation
from runner.forkserver import ForkServer
from tests.runner.harness import Harness, make_spec, write_package

REPO = Path(__file__).resolve().parent.parent.parent

ATTACK = """
import json, os, socket, time
def attempt(action):
    try:
        action()
        return "ok"
    except PermissionError:
        return "denied"
    except OSError as exc:
        return type(exc).__name__
def read(path):
    with open(path, "rb") as f:
        f.read(1)
def run(context, input, secret, checkout, parent, open_port):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for fd in range(0, 8):
                try:
                    os.close(fd)
                except OSError:
                    pass
            while True:
                time.sleep(1)
        os._exit(0)
    time.sleep(0.2)
    return json.dumps({
        "uid": os.getuid(),
        "secret": attempt(lambda: read(secret)),
        "checkout": attempt(lambda: read(checkout)),
        "environ": attempt(lambda: read(f"/proc/{parent}/environ")),
        "signal": attempt(lambda: os.kill(parent, 0)),
        "open_port": attempt(lambda: socket.create_connection(("127.0.0.1", open_port), 2).close()),
        "tmp": attempt(lambda: os.listdir("/tmp")),
    })
"""


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


async def probe(work: Path) -> dict:
    data = work / "data"
    data.mkdir()
    secret = data / "secret_key"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    opened = _listener()
    python = sys.executable
    rules = isolation.sandbox_rules(python, [str(REPO), str(data)], [])
    # As launch.sandbox_config makes it for children that share a user id: a layer each.
    server = ForkServer(python=python, sandbox={"rules": rules, "ports": [], "shared": None})
    await server.start()
    try:
        package = write_package(work / "packages", ATTACK)
        args = [
            str(secret),
            str(REPO / "README.md"),
            os.getpid(),
            opened.getsockname()[1],
        ]
        spec = make_spec(package, args=args, workdir=work / "run" / "one")
        child = await Harness(server).start(spec)
        await child.end_input()
        code = await child.wait_exit()
        before = {p for p in _children_of(server.pid)}
        await asyncio.sleep(0.5)  # the zygote kills the orphans as it reaps the instance
        left = _children_of(server.pid)
        # HUB_SANDBOX_NETWORK=isolated without root: a user namespace for the network one.
        boxed = make_spec(package, args=args, workdir=work / "run" / "two", isolate_network=True)
        second = await Harness(server).start(boxed)
        await second.end_input()
        boxed_code = await second.wait_exit()
        await asyncio.sleep(0.5)  # its daemon too, before the server closes
        left_boxed = _children_of(server.pid)
        return {
            "code": code,
            "report": json.loads(child.output) if code == 0 else None,
            "stderr": child.stderr.decode(errors="replace"),
            "orphans_at_exit": sorted(before),
            "orphans_left": sorted(left),
            "orphans_left_isolated": sorted(left_boxed),
            "isolated": json.loads(second.output) if boxed_code == 0 else second.stderr.decode(),
            "me": os.getuid(),
        }
    finally:
        await server.close()


def _children_of(pid: int | None) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(Path(sys.argv[1])))))
