"""The `si` CLI end to end, as subprocesses against a live hub: `-`, positional args, `--json`,
streams that follow, errors and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.client.conftest import (
    ECHO,
    EVENTS,
    FOREVER,
    LIFECYCLE_DIR,
    make_si,
    wait_connected,
)
from tests.conftest import ROOT, wait_for
from tests.packaging import python_package

# Live tests: a hub under load (CI runs the whole suite on one machine) can be slow.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

ARGS = """
import json
def run(context, input, *args):
    return json.dumps({"args": list(args), "config": context.config})
"""
STREAMS = """
import sys
def run(context, input):
    print("to stdout")
    print("to stderr", file=sys.stderr)
    context.logger.info("to log")
    return "to output"
"""
STDIN = """
import sys
def run(context, input):
    return "got:" + sys.stdin.read()
"""
SLOW = """
import asyncio
async def run(context, input):
    for n in range(10):
        yield f"{n}\\n"
        await asyncio.sleep(0.5)
"""


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode()


def write_package(tmp_path: Path, code: str, name: str = "pkg.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(python_package(code.lstrip("\n")))
    return path


def lifecycle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "lifecycle"
    shutil.copytree(LIFECYCLE_DIR, target)
    return target


def test_hub_commands(si) -> None:
    assert "API v1" in out(si("hub", "version"))
    assert json.loads(out(si("hub", "version", "--json")))["apiVersion"] == "v1"
    assert json.loads(out(si("--json", "hub", "version")))["apiVersion"] == "v1"
    assert "memory" in out(si("hub", "load"))
    assert json.loads(out(si("hub", "load", "--json")))["memFree"] > 0


def test_pack_send_start_and_dash(si, tmp_path: Path) -> None:
    directory = lifecycle_copy(tmp_path)
    packed = out(si("seq", "pack", "lifecycle")).strip()  # relative to its cwd, tmp_path
    assert packed == str(tmp_path / "lifecycle.tar.gz")
    assert Path(packed).is_file()
    seq_id = out(si("seq", "send", "-")).strip()
    assert seq_id and "\n" not in seq_id
    iid = out(si("seq", "start", "-", "3000", "10")).strip()
    assert out(si("inst", "output", "-")).split() == [str(n) for n in range(3000, 3010)]
    info = json.loads(out(si("inst", "info", "-", "--json")))
    assert (info["id"], info["sequence"]["id"], info["args"]) == (iid, seq_id, [3000, 10])
    assert json.loads(out(si("seq", "info", "-", "--json")))["id"] == seq_id

    custom = tmp_path / "elsewhere" / "custom.tar.gz"
    assert out(si("seq", "pack", str(directory), "-o", str(custom))).strip() == str(custom)
    assert json.loads(out(si("seq", "send", "-", "--json")))["id"] != seq_id
    assert json.loads(out(si("seq", "send", str(directory), "--json")))["id"]


def test_positional_args_are_json_where_they_parse(si, tmp_path: Path) -> None:
    si("seq", "send", str(write_package(tmp_path, ARGS)))
    si("seq", "start", "-", "3000", "10", "hello", "true", '{"a": 1}', "-7")
    got = json.loads(out(si("inst", "output", "-")))
    assert got == {"args": [3000, 10, "hello", True, {"a": 1}, -7], "config": {}}

    si("seq", "start", "-", "--args", '[3000, "10"]', "--config", '{"k": "v"}')
    assert json.loads(out(si("inst", "output", "-"))) == {
        "args": [3000, "10"],
        "config": {"k": "v"},
    }
    config_file = tmp_path / "config.json"
    config_file.write_text('{"from": "file"}')
    iid = json.loads(out(si("seq", "start", "-", "-f", str(config_file), "--json")))["id"]
    assert json.loads(out(si("inst", "output", iid)))["config"] == {"from": "file"}


def test_lists_as_tables_and_json(si, tmp_path: Path) -> None:
    seq_id = out(si("seq", "send", str(write_package(tmp_path, ECHO)))).strip()
    iid = out(si("seq", "start", "-")).strip()
    table = out(si("seq", "ls"))
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "VERSION"]
    assert seq_id in table
    assert seq_id in {s["id"] for s in json.loads(out(si("seq", "ls", "--json")))}
    inst_table = out(si("inst", "ls"))
    assert inst_table.splitlines()[0].split()[:3] == ["ID", "SEQUENCE", "STATUS"]
    assert iid in inst_table
    assert iid in {i["id"] for i in json.loads(out(si("inst", "ls", "--json")))}
    human = out(si("inst", "info", "-"))
    assert iid in human and "status" in human
    assert "healthy" in out(si("inst", "health", "-"))
    si("inst", "input", "-", input=b"")  # end input: the instance completes


def test_streams_and_input(si, tmp_path: Path) -> None:
    si("seq", "send", str(write_package(tmp_path, STREAMS)))
    iid = out(si("seq", "start", "-")).strip()
    assert out(si("inst", "output", "-")) == "to output"
    assert out(si("inst", "stdout", "-")) == "to stdout\n"
    assert out(si("inst", "stderr", "-")) == "to stderr\n"
    assert "to log" in out(si("inst", "log", "-"))
    # The list says how it ended, and who or what ended it.
    row = next(line for line in out(si("inst", "ls")).splitlines() if line.startswith(iid))
    assert row.endswith("completed (the sequence finished)"), row

    si("seq", "send", str(write_package(tmp_path, ECHO, "echo.tar.gz")))
    si("seq", "start", "-")
    si("inst", "input", "-", "--no-end", input=b"piped\n")
    data = tmp_path / "data.txt"
    data.write_text("from file\n")
    si("inst", "input", "-", str(data), "-t", "text/plain", "--end")
    assert out(si("inst", "output", "-")) == "echo:piped\necho:from file\n"

    si("seq", "send", str(write_package(tmp_path, STDIN, "stdin.tar.gz")))
    si("seq", "start", "-")
    si("inst", "stdin", "-", input=b"hello")
    assert out(si("inst", "output", "-")) == "got:hello"


def test_output_is_printed_as_it_arrives_and_ends_with_the_instance(si, tmp_path) -> None:
    si("seq", "send", str(write_package(tmp_path, SLOW)))
    si("seq", "start", "-")
    proc = si.popen("inst", "output", "-")
    started = time.monotonic()
    first = proc.stdout.readline()
    first_at = time.monotonic() - started
    rest = proc.stdout.read()
    assert proc.wait(30) == 0
    total = time.monotonic() - started
    assert first == b"0\n"
    assert rest == "".join(f"{n}\n" for n in range(1, 10)).encode()
    # The run lasts 5 s: the first line was printed long before the end, not all at once.
    assert total - first_at > 1.0


def test_events(si, tmp_path: Path) -> None:
    si("seq", "send", str(write_package(tmp_path, EVENTS)))
    si("seq", "start", "-")
    assert json.loads(out(si("inst", "event", "on", "-", "ready"))) == "yes"
    si("inst", "event", "emit", "-", "ping", '{"n": 7}')
    assert json.loads(out(si("inst", "event", "on", "-", "pong"))) == {"got": {"n": 7}}
    assert out(si("inst", "output", "-")) == "bye"


def test_event_on_next_and_stream(si, tmp_path: Path) -> None:
    code = """
import asyncio
async def run(context, input):
    go = asyncio.Event()
    context.on("go", lambda message: go.set())
    context.emit("ready", True)
    await asyncio.wait_for(go.wait(), 30)
    for n in range(3):
        context.emit("tick", {"n": n})
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
"""
    si("seq", "send", str(write_package(tmp_path, code)))
    si("seq", "start", "-")
    nxt = si.popen("inst", "event", "on", "-", "tick", "--next")
    stream = si.popen("inst", "event", "on", "-", "tick", "--stream")
    wait_connected(nxt.pid, si.env["SI_API_URL"])
    wait_connected(stream.pid, si.env["SI_API_URL"])
    assert json.loads(out(si("inst", "event", "on", "-", "ready"))) is True
    si("inst", "event", "emit", "-", "go")
    assert json.loads(nxt.communicate(timeout=30)[0]) == {"n": 0}
    lines = stream.communicate(timeout=30)[0].decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert nxt.returncode == stream.returncode == 0


def test_stop_kill_and_delete(si, tmp_path: Path) -> None:
    seq_id = out(si("seq", "send", str(write_package(tmp_path, FOREVER)))).strip()
    iid = out(si("seq", "start", "-")).strip()
    wait_for(lambda: json.loads(out(si("inst", "info", iid, "--json")))["status"] == "running")
    line = out(si("inst", "stop", "-", "1000"))
    assert iid in line
    wait_for(lambda: json.loads(out(si("inst", "info", iid, "--json")))["status"] == "completed")
    assert json.loads(out(si("inst", "info", iid, "--json")))["terminated"]["exitcode"] == 138

    victim = out(si("seq", "start", seq_id)).strip()
    wait_for(lambda: json.loads(out(si("inst", "info", victim, "--json")))["status"] == "running")
    assert f"killing {victim}" in out(si("inst", "kill", "-"))

    other = out(si("seq", "start", seq_id)).strip()
    wait_for(lambda: json.loads(out(si("inst", "info", other, "--json")))["status"] == "running")
    refused = si("seq", "delete", seq_id, check=False)
    assert refused.returncode == 1
    assert "error: Can't remove sequence in use" in err(refused)
    assert "SEQUENCE_IN_USE, HTTP 409" in err(refused)
    assert out(si("seq", "delete", "-", "-f")).strip() == f"deleted {seq_id}"
    assert seq_id not in out(si("seq", "ls"))


def test_deploy_packs_sends_and_starts(si, tmp_path: Path) -> None:
    directory = lifecycle_copy(tmp_path)
    iid = out(si("seq", "deploy", str(directory), "5", "3")).strip()
    assert out(si("inst", "output", iid)).split() == ["5", "6", "7"]
    both = json.loads(out(si("seq", "deploy", str(directory), "--args", "[1, 1]", "--json")))
    assert out(si("inst", "output", "-")).split() == ["1"]
    assert json.loads(out(si("inst", "info", "-", "--json")))["sequence"]["id"] == both["sequence"]


def test_errors_go_to_stderr_with_a_non_zero_exit(si, hub, tmp_path: Path) -> None:
    missing = si("seq", "info", "no-such-seq", check=False)
    assert missing.returncode == 1 and out(missing) == ""
    assert err(missing).strip() == ("error: Sequence no-such-seq not found (NOT_FOUND, HTTP 404)")
    as_json = si("seq", "start", "no-such-seq", "--json", check=False)
    assert as_json.returncode == 1
    assert json.loads(err(as_json)) == {
        "error": "Sequence no-such-seq not found",
        "code": "NOT_FOUND",
        "status": 404,
    }

    bad = tmp_path / "bad"
    bad.mkdir()
    no_package = si("seq", "pack", str(bad), check=False)
    assert no_package.returncode == 1 and "package.json not found" in err(no_package)

    nothing = make_si(tmp_path / "fresh", hub.api, None)
    dash = nothing("inst", "output", "-", check=False)
    assert dash.returncode == 1
    assert "'-' means the last instance started, and none was started yet" in err(dash)
    anonymous = nothing("seq", "ls", check=False)
    assert anonymous.returncode == 1 and "NEED_AUTHENTICATION, HTTP 401" in err(anonymous)

    refused = si("seq", "send", str(write_package(tmp_path, ECHO)), "--token", "wrong", check=False)
    assert refused.returncode == 1 and "HTTP 401" in err(refused)

    usage = si("seq", "start", check=False)
    assert usage.returncode == 2 and "usage:" in err(usage)
    down = si("hub", "version", "--api-url", "http://127.0.0.1:9/api/v1", check=False)
    assert down.returncode == 1 and "CANNOT_CONNECT" in err(down)


def test_config_file_alone_points_si_at_the_hub(hub, people, tmp_path: Path) -> None:
    si = make_si(tmp_path, "", None)
    si("config", "set", "apiUrl", hub.api, extra_env={"SI_API_URL": ""})
    si("config", "set", "token", people["viewer"].token, extra_env={"SI_API_URL": ""})
    printed = out(si("config", "print", extra_env={"SI_API_URL": ""}))
    assert hub.api in printed and str(tmp_path / "hub.json") in printed
    listing = si("seq", "ls", "--json", extra_env={"SI_API_URL": ""})
    assert isinstance(json.loads(out(listing)), list)
    si("config", "reset", "all", extra_env={"SI_API_URL": ""})
    assert "default" in out(si("config", "print", extra_env={"SI_API_URL": ""}))


def test_component_and_sequencer_commands(si, tmp_path: Path) -> None:
    comp = f"TST.cli{uuid.uuid4().hex[:6]}"
    prefix = f"TST.clq{uuid.uuid4().hex[:6]}"
    assert out(si("component", "create", comp)).strip() == f"created {comp}"
    assert f"{comp}  Idle  sequencer: none" in out(si("component", "status", comp))
    si("seq", "send", str(ROOT / "examples" / "darknight"))
    loaded = out(si("component", "load-script", comp, "-", prefix))
    assert loaded.startswith(f"sequencer {prefix} (") and loaded.strip().endswith("Idle")
    assert comp in out(si("component", "ls"))
    assert prefix in out(si("sequencer", "ls"))

    steps = tmp_path / "steps.json"
    steps.write_text(
        json.dumps(
            [
                {"type": "Setup", "command": "move", "params": {"sleep": 0}},
                {"type": "Observe", "command": "expose", "params": {"exposure": 0}},
            ]
        )
    )
    assert out(si("sequencer", "load", prefix, str(steps))).strip() == "Ok"
    one = '[{"type": "Observe", "command": "readout"}]'
    assert out(si("sequencer", "add", prefix, one)).strip() == "Ok"
    si(
        "sequencer",
        "prepend",
        prefix,
        "-",
        input=b'{"commands": [{"type": "Setup", "command": "configure"}]}',
    )
    info = json.loads(out(si("sequencer", "info", prefix, "--json")))
    ids = [s["id"] for s in info["stepList"]]
    assert [s["command"] for s in info["stepList"]] == ["configure", "move", "expose", "readout"]
    si("sequencer", "replace", prefix, ids[1], '[{"type": "Setup", "command": "slew"}]')
    si(
        "sequencer",
        "insert-after",
        prefix,
        ids[0],
        '[{"type": "Setup", "command": "wait", "params": {"sleep": 0}}]',
    )
    si("sequencer", "delete", prefix, ids[3])
    si("sequencer", "add-breakpoint", prefix, ids[2])
    table = out(si("sequencer", "info", prefix))
    assert "STEP" in table and "configure" in table and "*" in table
    si("sequencer", "remove-breakpoint", prefix, ids[2])
    assert out(si("sequencer", "reset", prefix)).strip() == "Ok"

    refused = si("sequencer", "pause", prefix, check=False)
    assert refused.returncode == 1
    assert err(refused).strip() == (
        "error: Sequencer can not accept 'Pause' message in 'Idle' state (CONFLICT, HTTP 409)"
    )
    missing = si("sequencer", "delete", prefix, "nope", check=False)
    assert missing.returncode == 1  # Idle: Unhandled before the id is even looked at

    assert out(si("sequencer", "go-offline", prefix)).strip() == "Ok"
    assert out(si("sequencer", "go-online", prefix)).strip() == "Ok"
    assert out(si("sequencer", "diagnostic-mode", prefix, "--hint", "h")).strip() == "Ok"
    assert out(si("sequencer", "operations-mode", prefix)).strip() == "Ok"
    si("sequencer", "load", prefix, str(steps))
    started = out(si("sequencer", "start", prefix))
    assert started.startswith("Started run ")
    run_id = started.split()[-1]
    final = json.loads(
        out(si("sequencer", "query-final", prefix, run_id, "--timeout", "30", "--json"))
    )
    assert final == {"type": "Completed", "runId": run_id}
    assert out(si("sequencer", "query", prefix, run_id)).strip() == f"Completed run {run_id}"

    slow = (
        '[{"type": "Setup", "command": "wait", "params": {"sleep": 1.5}}, '
        '{"type": "Setup", "command": "wait", "params": {"sleep": 1.5}}]'
    )
    run = json.loads(out(si("sequencer", "submit", prefix, slow, "--json")))
    assert run["type"] == "Started"
    assert out(si("sequencer", "pause", prefix)).strip() == "Ok"
    assert out(si("sequencer", "resume", prefix)).strip() == "Ok"
    assert out(si("sequencer", "abort", prefix)).strip() == "Ok"
    si("sequencer", "query-final", prefix, run["runId"], "--timeout", "30")
    si("sequencer", "submit", prefix, slow)
    assert out(si("sequencer", "stop", prefix)).strip() == "Ok"
    history = out(si("sequencer", "transitions", prefix))
    assert history.splitlines()[0].split()[:3] == ["TIME", "COMMAND", "FROM"]

    follower = si.popen("sequencer", "events", prefix)
    wait_connected(follower.pid, si.env["SI_API_URL"])
    fresh = out(si("component", "restart", comp))
    assert fresh.startswith(f"sequencer {prefix} (")  # the old sequencer is shut down
    lines = follower.communicate(timeout=60)[0].decode().splitlines()
    assert lines[-1].startswith("Killed")
    assert out(si("sequencer", "shutdown", prefix)).strip() == "Ok"
    assert out(si("component", "unload-script", comp)).strip() == "Ok"


def test_restart_and_inout(si, tmp_path: Path) -> None:
    si("seq", "send", str(write_package(tmp_path, ARGS)))
    first = out(si("seq", "start", "-", "--args", '[1, "two"]', "--config", '{"k": "v"}')).strip()
    assert json.loads(out(si("inst", "output", first)))["args"] == [1, "two"]
    second = out(si("inst", "restart", first)).strip()
    assert second and second != first
    # `-` now names the restarted instance: same args and appConfig, linked both ways.
    assert json.loads(out(si("inst", "output", "-"))) == {"args": [1, "two"], "config": {"k": "v"}}
    assert json.loads(out(si("inst", "info", "-", "--json")))["restartedFrom"] == first
    assert json.loads(out(si("inst", "info", first, "--json")))["restartedAs"] == second

    si("seq", "send", str(write_package(tmp_path, ECHO, "echo.tar.gz")))
    si("seq", "start", "-")
    echoed = si("inst", "inout", "-", input=b"a\nb\n")
    assert out(echoed) == "echo:a\necho:b\n"


def test_start_with_a_placement(si, tmp_path: Path) -> None:
    """`--placement-label` and `--worker` reach the hub: a label no worker has is refused
    with the reason, a worker's name puts the instance there."""
    si("seq", "send", str(write_package(tmp_path, FOREVER)))
    refused = si("seq", "start", "-", "--placement-label", "gpu", "--json", check=False)
    assert refused.returncode == 1
    answer = json.loads(err(refused))
    assert (answer["status"], answer["code"]) == (507, "INSUFFICIENT_RESOURCES")
    assert "no live worker" in answer["error"] and "has labels gpu" in answer["error"]
    first = out(si("seq", "start", "-")).strip()
    worker = wait_for(
        lambda: json.loads(out(si("inst", "info", first, "--json")))["worker"],
        what="the worker of the first instance",
    )
    placed = out(si("seq", "start", "-", "--worker", worker)).strip()
    info = json.loads(out(si("inst", "info", placed, "--json")))
    assert info["placement"] == {"worker": worker}
    for iid in (first, placed):
        si("inst", "kill", iid)
