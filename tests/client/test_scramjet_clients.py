"""Scramjet's own clients against the hub, unmodified: `@scramjet/cli` 0.26.1 and
`@scramjet/api-client` 0.26.1 from npm, and `scramjet-api-client` 1.1.1 from PyPI.

The packages are installed on first use into var/cache/ (npm with `--prefix`, pip with
`--target`). The PyPI package is a top-level package named `client`, like this project's, so it
cannot live in the project's virtualenv: it would shadow `client` for the `si` script. It runs
in a subprocess with only its own directory on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client import HostClient
from client.pack import pack
from tests.client.conftest import FOREVER, LIFECYCLE_DIR, package
from tests.conftest import IN_CI, ROOT, Hub, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

CACHE = ROOT / "var" / "cache"
NPM_DIR = CACHE / "scramjet-npm"
PYPI_DIR = CACHE / "scramjet-py"
NPM_PACKAGES = {"@scramjet/cli": "0.26.1", "@scramjet/api-client": "0.26.1"}
PYPI_PACKAGE = ("scramjet-api-client", "1.1.1")
SCRIPTS = Path(__file__).parent / "scramjet"

EVENTS_ECHO = """
async def run(context, input):
    context.on("ping", lambda message: context.emit("pong", {"got": message}))
    context.emit("ready", "yes")
    print("started", flush=True)
    async for line in input:
        yield "echo:" + line
"""


def _npm_ready() -> bool:
    for name, version in NPM_PACKAGES.items():
        manifest = NPM_DIR / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


@pytest.fixture(scope="session")
def scramjet_npm() -> Path:
    """node_modules holding Scramjet's CLI and API client, installed when missing."""
    if not _npm_ready():
        npm = shutil.which("npm")
        if npm is None:
            if IN_CI:
                pytest.fail("npm is not installed: cannot test Scramjet's own npm clients")
            pytest.skip("npm is not installed: cannot test Scramjet's own npm clients")
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
        done = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(NPM_DIR),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                *specs,
            ],
            capture_output=True,
            timeout=400,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert _npm_ready()
    return NPM_DIR / "node_modules"


@pytest.fixture(scope="session")
def scramjet_pypi() -> Path:
    """A directory holding scramjet-api-client 1.1.1 and its dependencies (pip --target)."""
    name, version = PYPI_PACKAGE
    marker = PYPI_DIR / f"{name.replace('-', '_')}-{version}.dist-info"
    if not marker.is_dir():
        shutil.rmtree(PYPI_DIR, ignore_errors=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(PYPI_DIR),
                f"{name}=={version}",
            ],
            capture_output=True,
            timeout=400,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert (PYPI_DIR / "client" / "host_client.py").is_file()
    return PYPI_DIR


def run_flow(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a flow script; on a hang, fail with the steps it printed on stderr."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{args[1]} hung; its last words: {stderr.decode(errors='replace')[-2000:]}"
        ) from None
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@dataclass
class Packages:
    lifecycle: Path
    events: Path
    forever: Path


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Packages:
    tmp = tmp_path_factory.mktemp("scramjet-packages")
    events = tmp / "events.tar.gz"
    events.write_bytes(package(EVENTS_ECHO))
    forever = tmp / "forever.tar.gz"
    forever.write_bytes(package(FOREVER))
    lifecycle = pack(LIFECYCLE_DIR, tmp / "lifecycle.tar.gz").path
    return Packages(lifecycle, events, forever)


class ScramjetSi:
    """Scramjet's `si` 0.26.1 with a private home, temp dir (its session) and profile."""

    def __init__(self, node_modules: Path, workdir: Path, api_url: str) -> None:
        self.bin = node_modules / ".bin" / "si"
        self.workdir = workdir
        (workdir / "home" / ".si").mkdir(parents=True)
        (workdir / "tmp").mkdir()
        profile = workdir / "profile.json"
        profile.write_text(
            json.dumps(
                {
                    "configVersion": 1,
                    "apiUrl": api_url,
                    "middlewareApiUrl": "",
                    "env": "development",
                    "scope": "",
                    "token": "",
                    "log": {"debug": False, "format": "json"},
                }
            )
        )
        self.env = {
            **os.environ,
            "HOME": str(workdir / "home"),
            "TMPDIR": str(workdir / "tmp"),
            "SI_CONFIG_PATH": str(profile),
        }
        self.env.pop("SI_API_URL", None)
        self.env.pop("SI_TOKEN", None)

    def __call__(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.bin), *args],
            input=input,
            capture_output=True,
            cwd=self.workdir,
            env=self.env,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"scramjet si {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout.decode()} {result.stderr.decode()}"
            )
        return result

    def json(self, *args: str) -> object:
        return json.loads(self(*args).stdout)


@pytest.fixture
def scramjet_si(scramjet_npm: Path, anon_hub: Hub, tmp_path: Path) -> Iterator[ScramjetSi]:
    yield ScramjetSi(scramjet_npm, tmp_path, anon_hub.api)


def status(sj: ScramjetSi, iid: str, wanted: str) -> dict:
    return wait_for(
        lambda: (d := sj.json("inst", "info", iid))["status"] == wanted and d,
        timeout=30,
        what=f"{iid} to be {wanted}",
    )


def test_scramjet_cli_lifecycle(scramjet_si: ScramjetSi) -> None:
    sj = scramjet_si
    shutil.copytree(LIFECYCLE_DIR, sj.workdir / "lifecycle")
    sj("seq", "pack", "lifecycle")
    assert (sj.workdir / "lifecycle.tar.gz").is_file()
    # Quirk of 0.26.1: send and start print the client object, not the hub's answer.
    sent = sj.json("seq", "send", "-")
    seq_id = sent["_id"]
    assert sent["sequenceURL"] == f"sequence/{seq_id}"
    started = sj.json("seq", "start", "-", "--args", "[3000, 10]")
    iid = started["_id"]
    assert sj("inst", "output", "-").stdout.decode().split() == [str(n) for n in range(3000, 3010)]
    info = status(sj, iid, "completed")
    assert info["args"] == [3000, 10] and info["sequence"]["id"] == seq_id
    assert info["terminated"] == {"exitcode": 0, "reason": "Instance completed"}
    # Quirk of 0.26.1: positional arguments are dropped, the instance gets no args.
    ignored = sj.json("seq", "start", "-", "3000", "10")["_id"]
    assert sj.json("inst", "info", ignored)["args"] == []
    assert seq_id in {s["id"] for s in sj.json("seq", "ls")}
    assert sj.json("seq", "get", seq_id)["name"] == "lifecycle"
    assert iid in {i["id"] for i in sj.json("inst", "ls")}
    assert sj.json("hub", "version")["apiVersion"] == "v1"
    assert sj.json("hub", "load")["memFree"] > 0


def test_scramjet_cli_input_events_stop_kill_delete(
    scramjet_si: ScramjetSi, packages: Packages
) -> None:
    sj = scramjet_si
    sj.json("seq", "send", str(packages.events))
    iid = sj.json("seq", "start", "-")["_id"]
    assert sj.json("inst", "event", "on", "-", "ready") == "yes"
    assert sj.json("inst", "event", "emit", "-", "ping", "hi") == {"accepted": True}
    assert sj.json("inst", "event", "on", "-", "pong") == {"got": "hi"}
    assert sj.json("inst", "health", "-")["healthy"] is True
    # Scramjet's si keeps input open (x-end-stream: false) unless given -e.
    sj("inst", "input", "-", "-e", input=b"hello\nworld\n")
    assert sj("inst", "output", "-").stdout == b"echo:hello\necho:world\n"
    assert sj("inst", "stdout", iid).stdout == b"started\n"
    assert status(sj, iid, "completed")["terminated"]["exitcode"] == 0

    seq_id = sj.json("seq", "send", str(packages.forever))["_id"]
    stopped = sj.json("seq", "start", "-")["_id"]
    status(sj, stopped, "running")
    sj("inst", "stop", "-", "1000")  # 0.26.1 sends [4001, {timeout, canCallKeepalive}]
    assert status(sj, stopped, "completed")["terminated"]["exitcode"] == 138
    assert b"stop handler 1.0 True" in sj("inst", "stdout", stopped).stdout

    killed = sj.json("seq", "start", seq_id)["_id"]
    status(sj, killed, "running")
    sj("inst", "kill", "-")  # 0.26.1 sends [4002, {removeImmediately}]
    assert status(sj, killed, "completed")["terminated"]["exitcode"] == 137

    busy = sj.json("seq", "start", seq_id)["_id"]
    status(sj, busy, "running")
    refused = sj("seq", "delete", seq_id, check=False)
    assert refused.returncode == 1
    assert b"409" in refused.stdout + refused.stderr
    sj("inst", "kill", busy)
    status(sj, busy, "completed")
    sj("seq", "delete", seq_id)
    assert seq_id not in {s["id"] for s in sj.json("seq", "ls")}


def test_scramjet_api_client(scramjet_npm: Path, anon_hub: Hub, packages: Packages) -> None:
    done = subprocess.run(
        [
            "node",
            str(SCRIPTS / "api_client_flow.js"),
            anon_hub.api,
            str(packages.lifecycle),
            str(packages.events),
            str(packages.forever),
        ],
        capture_output=True,
        timeout=300,
        env={**os.environ, "NODE_PATH": str(scramjet_npm)},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    seen = json.loads(done.stdout)
    assert seen["version"]["apiVersion"] == "v1" and seen["load"]["memFree"] > 0
    assert seen["sequenceId"] in seen["listed"]
    assert seen["sequence"]["id"] == seen["sequenceInfo"]["id"] == seen["sequenceId"]
    assert seen["output"] == "".join(f"{n}\n" for n in range(3000, 3010))
    assert seen["info"]["args"] == [3000, 10]
    assert seen["info"]["appConfig"] == {"from": "api-client"}
    assert seen["info"]["terminated"]["exitcode"] == 0
    assert seen["instanceInfo"]["id"] == seen["instanceId"]
    assert seen["sequenceInstances"] == [seen["instanceId"]]
    assert seen["instanceId"] in seen["instances"]
    assert seen["ready"] == "yes"
    assert seen["eventAnswer"] == {"accepted": True}
    assert seen["pong"] == {"got": "hi"}
    assert seen["echo"] == "echo:one\necho:two\n"
    assert seen["stdout"] == "started\n"
    assert seen["health"]["healthy"] is True
    assert seen["stopAnswer"]["id"] and seen["stopped"]["terminated"]["exitcode"] == 138
    assert seen["killAnswer"]["id"] and seen["killed"]["terminated"]["exitcode"] == 137
    assert seen["deleteInUse"]["status"] in (409, "409")
    assert seen["deleted"]["id"]
    assert seen["missingStart"] == {"message": "No id provided"}  # as against STH


def _pypi_flow(pypi_dir: Path, api: str, packages: Packages, tmp: Path, token: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pypi_dir)
    args = [
        sys.executable,
        str(SCRIPTS / "pypi_client_flow.py"),
        api,
        str(packages.lifecycle),
        str(packages.events),
        str(packages.forever),
    ]
    done = subprocess.run(
        [*args, token] if token else args, capture_output=True, timeout=300, cwd=tmp, env=env
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-4000:]
    result = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    return json.loads(result[-1].removeprefix("RESULT "))


def _check_pypi(seen: dict) -> None:
    assert seen["version"]["apiVersion"] == "v1" and seen["load"]["memFree"] > 0
    assert seen["sequenceId"] in seen["listed"]
    assert seen["sequence"]["id"] == seen["sequenceInfo"]["id"] == seen["sequenceId"]
    # 1.1.1's start() sends no payload, so run() counts from its defaults.
    assert seen["output"] == "".join(f"{n}\n" for n in range(1000))
    assert seen["info"]["status"] == "completed" and seen["info"]["args"] == []
    assert seen["instanceInfo"]["id"] == seen["instanceId"] in seen["instances"]
    assert seen["sequenceInstances"] == [seen["instanceId"]]
    assert seen["ready"] == "yes"
    assert seen["eventAnswer"] == {"accepted": True}
    # 1.1.1 misspells the event's message field ("messagee"): the sequence gets None.
    assert seen["pong"] == {"got": None}
    assert seen["inputAnswer"]["accepted"] is True
    assert seen["echo"] == "echo:one\necho:two\n"
    assert seen["health"]["healthy"] is True
    assert seen["stopped"]["terminated"]["exitcode"] == 138
    assert seen["killed"]["terminated"]["exitcode"] == 137
    assert seen["deleteInUse"]["code"] == "SEQUENCE_IN_USE"
    assert seen["deleted"]["id"]


def test_scramjet_pypi_client_anonymous(
    scramjet_pypi: Path, anon_hub: Hub, packages: Packages, tmp_path: Path
) -> None:
    _check_pypi(_pypi_flow(scramjet_pypi, anon_hub.api, packages, tmp_path))


def test_scramjet_pypi_client_with_a_bearer_token(
    scramjet_pypi: Path, hub: Hub, people, packages: Packages, tmp_path: Path
) -> None:
    _check_pypi(_pypi_flow(scramjet_pypi, hub.api, packages, tmp_path, token=people["admin"].token))


# topics (docs/topics.md)


def test_scramjet_cli_topics(scramjet_si: ScramjetSi, anon_hub: Hub, tmp_path: Path) -> None:
    sj = scramjet_si
    name = f"sj-{uuid.uuid4().hex[:10]}"
    # 0.26.1's `topic get` follows the topic; its `topic send` (text/plain unless -t) cannot
    # end it, so this reader ends when another client does.
    reader = subprocess.Popen(
        [str(sj.bin), "topic", "get", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=sj.workdir,
        env=sj.env,
    )
    with HostClient(anon_hub.api) as host:
        wait_for(lambda: topic_of(host, name)["consumers"], what="Scramjet's si to read")
        data = tmp_path / "lines.txt"
        data.write_bytes(b"one\ntwo\n")
        sj("topic", "send", name, str(data), "-t", "application/x-ndjson")
        sj("topic", "send", name, "-t", "application/x-ndjson", input=b"three\n")
        listed = [t for t in sj.json("topic", "ls") if t["topic"] == name]  # type: ignore[union-attr]
        assert listed and listed[0]["contentType"] == "application/x-ndjson"
        host.send_named_data(name, b"", end=True)
    stdout, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stderr.decode(errors="replace")
    assert stdout == b"one\ntwo\nthree\n"


def test_scramjet_api_client_topics(scramjet_npm: Path, anon_hub: Hub) -> None:
    name = f"sj-{uuid.uuid4().hex[:10]}"
    done = run_flow(
        ["node", str(SCRIPTS / "topics_flow.js"), anon_hub.api, name],
        env={**os.environ, "NODE_PATH": str(scramjet_npm)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    seen = json.loads(done.stdout)
    assert seen["sent"] == {"accepted": True, "bytes": 18, "end": False}
    assert seen["ended"]["end"] is True
    assert seen["data"] == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    listed = [t for t in seen["topics"] if t["topic"] == name]
    assert listed and listed[0]["contentType"] == "application/x-ndjson"


def topic_of(host: HostClient, name: str) -> dict:
    return next((t for t in host.get_topics() if t["topic"] == name), {"consumers": 0})
