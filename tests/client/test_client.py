"""Every HostClient, SequenceClient and InstanceClient method (and the async twins) against a
live hub: daphne, a Celery worker, real child processes."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from client import (
    AsyncHostClient,
    ComponentClient,
    HostClient,
    HubClientError,
    InstanceClient,
    SequenceClient,
    SequencerClient,
)
from client.pack import pack
from tests.client.conftest import (
    ECHO,
    EVENTS,
    FOREVER,
    LIFECYCLE_DIR,
    package,
    wait_connected,
)
from tests.conftest import ROOT, wait_for

# Live tests: a hub under load (CI runs the whole suite on one machine) can be slow.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

NUMBERS = [str(n) for n in range(3000, 3010)]


def ended(inst: InstanceClient, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (d := inst.get_info())["status"] in ("completed", "errored", "lost") and d,
        timeout=timeout,
        what=f"instance {inst.id} to end",
    )


def running(inst: InstanceClient) -> None:
    wait_for(lambda: inst.get_info()["status"] == "running", what=f"{inst.id} running")


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` in a thread (for calls that block until the sequence does something)."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test to re-raise
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_hub_version_and_load(host: HostClient) -> None:
    assert host.url.endswith("/api/v1")
    version = host.get_version()
    assert version["apiVersion"] == "v1" and version["version"]
    load = host.get_load_check()
    assert load["memFree"] > 0 and load["fsSize"][0]["size"] > 0


def test_log_stream_yields_the_hubs_log(host: HostClient) -> None:
    # Starting an instance writes to the hub's log; the log never ends: read until that line.
    inst = host.send_sequence(LIFECYCLE_DIR).start(args=[0, 1])
    stream = host.get_log_stream()
    seen = b""
    for chunk in stream:
        seen += chunk
        if inst.id.encode() in seen:
            break
    stream.close()
    assert f"instance {inst.id} started".encode() in seen


def test_send_sequence_from_bytes_file_path_and_directory(host: HostClient, tmp_path: Path) -> None:
    from_bytes = host.send_sequence(package(ECHO))
    from_file = host.send_sequence(io.BytesIO(package(ECHO)))
    archive = pack(LIFECYCLE_DIR, tmp_path / "lifecycle.tar.gz").path
    from_path = host.send_sequence(archive)
    from_str_path = host.send_sequence(str(archive))
    from_dir = host.send_sequence(LIFECYCLE_DIR)
    ids = {s.id for s in (from_bytes, from_file, from_path, from_str_path, from_dir)}
    assert len(ids) == 5
    assert all(isinstance(s, SequenceClient) for s in (from_bytes, from_dir))
    listed = {s["id"]: s for s in host.list_sequences()}
    assert ids <= set(listed)
    assert listed[from_dir.id]["name"] == "lifecycle"
    info = from_dir.get_info()
    assert info["config"]["main"] == "main.py"
    assert "main.py" in str(info["files"])
    assert host.get_sequence(from_dir.id)["id"] == from_dir.id
    assert host.get_sequence("lifecycle")["name"] == "lifecycle"  # by name, as STH HEAD


def test_overwrite_and_delete(host: HostClient) -> None:
    seq = host.send_sequence(package(ECHO))
    newer = seq.overwrite(package(FOREVER))
    assert newer.id != seq.id
    assert host.delete_sequence(seq.id) == {"id": seq.id}
    with pytest.raises(HubClientError) as info:
        seq.get_info()
    assert (info.value.status, info.value.code) == (404, "NOT_FOUND")
    assert seq.id in info.value.message
    SequenceClient.from_id(newer.id, host).get_info()


def test_start_follow_output_and_info(host: HostClient) -> None:
    seq = host.send_sequence(LIFECYCLE_DIR)
    inst = seq.start(args=[3000, 10], app_config={"who": "tests"})
    assert isinstance(inst, InstanceClient)
    # get_lines follows until the instance ends, then stops by itself.
    assert list(inst.get_lines("output")) == NUMBERS
    info = ended(inst)
    assert info["status"] == "completed"
    assert info["terminated"] == {"exitcode": 0, "reason": "Instance completed"}
    assert info["args"] == [3000, 10] and info["appConfig"] == {"who": "tests"}
    assert seq.list_instances() == [inst.id]
    assert inst.id in {i["id"] for i in host.list_instances()}
    assert host.get_instance_info(inst.id)["sequence"]["id"] == seq.id
    assert seq.get_instance(inst.id).get_info()["id"] == inst.id
    assert host.get_instance_client(inst.id).id == inst.id
    assert InstanceClient.from_id(inst.id, host).get_info()["status"] == "completed"
    # A stream read after the end replays everything.
    assert b"".join(inst.get_stream("output")).decode().split() == NUMBERS


def test_start_with_instance_id_limits_and_defaults(host: HostClient) -> None:
    seq = host.send_sequence(LIFECYCLE_DIR)
    inst = seq.start(args=[1, 3], limits={"memory": 256}, instance_id="client-test-inst-1")
    assert inst.id == "client-test-inst-1"
    assert list(inst.get_lines("output")) == ["1", "2", "3"]
    assert inst.get_info()["limits"] == {"memory": 256}
    defaults = seq.start()  # no args: run()'s defaults, 0..999
    lines = list(defaults.get_lines("output"))
    assert lines[0] == "0" and lines[-1] == "999" and len(lines) == 1000


def test_stdout_stderr_and_log_streams(host: HostClient) -> None:
    seq = host.send_sequence(
        package("""
        import sys
        def run(context, input):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            context.logger.info("to log")
            return "to output"
    """)
    )
    inst = seq.start()
    assert b"".join(inst.get_stream("output")) == b"to output"
    assert list(inst.get_lines("stdout")) == ["to stdout"]
    assert list(inst.get_lines("stderr")) == ["to stderr"]
    assert any("to log" in line for line in inst.get_lines("log"))
    with pytest.raises(ValueError, match="no stream"):
        inst.get_stream("nonsense")


def test_send_input_in_parts_and_from_a_file(host: HostClient, tmp_path: Path) -> None:
    seq = host.send_sequence(package(ECHO))
    inst = seq.start()
    inst.send_input("a\n", end=False)
    inst.send_input(b"b\n", content_type="text/plain", end=False)
    inst.send_input(iter([b"c\n", b"d\n"]), end=True)
    assert list(inst.get_lines("output")) == ["echo:a", "echo:b", "echo:c", "echo:d"]

    other = seq.start()
    source = tmp_path / "in.txt"
    source.write_text("x\ny\n")
    with source.open("rb") as fh:
        other.send_input(fh)  # the hub's default closes input after this body
    assert list(other.get_lines("output")) == ["echo:x", "echo:y"]


def test_send_stdin(host: HostClient) -> None:
    seq = host.send_sequence(
        package("""
        import sys
        def run(context, input):
            return "got:" + sys.stdin.read()
    """)
    )
    inst = seq.start()
    inst.send_stdin(b"hello")
    assert b"".join(inst.get_stream("output")) == b"got:hello"


def test_events_both_ways(host: HostClient) -> None:
    inst = host.send_sequence(package(EVENTS)).start()
    assert inst.get_event("ready") == "yes"
    inst.send_event("ping", {"n": 7})
    assert inst.get_event("pong") == {"got": {"n": 7}}
    assert b"".join(inst.get_stream("output")) == b"bye"


def test_next_event_and_event_stream(host: HostClient) -> None:
    inst = host.send_sequence(
        package("""
        import asyncio
        async def run(context, input):
            go = asyncio.Event()
            context.on("go", lambda message: go.set())
            context.emit("ready", True)
            await asyncio.wait_for(go.wait(), 30)
            for n in range(3):
                context.emit("tick", n)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
    """)
    ).start()
    nxt, first = in_thread(lambda: inst.get_next_event("tick"))
    streamed, all_ticks = in_thread(lambda: list(inst.get_event_stream("tick")))
    # Both readers must be waiting before anything is emitted: two connections of ours.
    wait_connected(os.getpid(), host.url, count=2)
    assert inst.get_event("ready") is True  # its handler for "go" is in place
    inst.send_event("go")
    nxt.join(30)
    streamed.join(30)
    assert first == [0]
    assert all_ticks == [[0, 1, 2]]  # the stream ends with the instance


def test_health_stop_and_kill(host: HostClient) -> None:
    seq = host.send_sequence(package(FOREVER))
    inst = seq.start()
    running(inst)
    health = inst.get_health()
    assert health["healthy"] is True
    started = time.monotonic()
    info = inst.stop(timeout=1000)
    assert time.monotonic() - started < 10
    assert info["id"] == inst.id
    done = ended(inst)
    assert (done["status"], done["terminated"]["exitcode"]) == ("completed", 138)
    assert b"stop handler 1.0 False" in b"".join(inst.get_stream("stdout"))

    victim = seq.start()
    running(victim)
    assert victim.kill()["id"] == victim.id
    assert ended(victim)["terminated"]["exitcode"] == 137
    with pytest.raises(HubClientError) as info_err:
        victim.kill()  # not running any more
    assert info_err.value.status == 409

    gone = seq.start()
    running(gone)
    gone.kill()
    ended(gone)
    gone.kill(remove_immediately=True)
    with pytest.raises(HubClientError) as missing:
        gone.get_info()
    assert missing.value.code == "NOT_FOUND"


def test_delete_in_use_conflicts_unless_forced(host: HostClient) -> None:
    seq = host.send_sequence(package(FOREVER))
    inst = seq.start()
    running(inst)
    with pytest.raises(HubClientError) as info:
        host.delete_sequence(seq.id)
    assert (info.value.status, info.value.code) == (409, "SEQUENCE_IN_USE")
    assert host.delete_sequence(seq.id, force=True) == {"id": seq.id}
    assert seq.id not in {s["id"] for s in host.list_sequences()}


def test_start_with_a_placement(host: HostClient) -> None:
    seq = host.send_sequence(package(FOREVER))
    with pytest.raises(HubClientError) as info:
        seq.start(placement={"labels": ["gpu"]})
    assert (info.value.status, info.value.code) == (507, "INSUFFICIENT_RESOURCES")
    assert "has labels gpu" in info.value.message
    with pytest.raises(HubClientError) as info:
        seq.start(placement={"labels": ["gpu"], "zone": "a"})
    assert (info.value.status, info.value.code) == (422, "INVALID_CONFIG")
    assert info.value.message == "placement.zone is not a placement field: use labels, worker"
    first = seq.start()
    running(first)
    worker = first.get_info()["worker"]
    placed = seq.start(placement={"worker": worker})
    assert placed.get_info()["placement"] == {"worker": worker}
    for inst in (first, placed):
        inst.kill()


def test_refusals_carry_status_code_and_message(host: HostClient, hub, people) -> None:
    with pytest.raises(HubClientError) as info:
        host.get_sequence_client("no-such-sequence").start()
    assert (info.value.status, info.value.code) == (404, "NOT_FOUND")

    seq = host.send_sequence(package(ECHO))
    with pytest.raises(HubClientError) as info:
        seq.start(limits={"memory": 1})
    assert (info.value.status, info.value.code) == (422, "INVALID_CONFIG")
    assert "limits.memory" in info.value.message

    with pytest.raises(HubClientError) as info:
        host.send_sequence(b"not a tarball")
    assert info.value.status == 422 and info.value.message

    with HostClient(hub.url) as anonymous, pytest.raises(HubClientError) as info:
        anonymous.list_sequences()
    assert (info.value.status, info.value.code) == (401, "NEED_AUTHENTICATION")

    with HostClient(hub.api, token=people["viewer"].token) as viewer:
        assert isinstance(viewer.list_sequences(), list)
        with pytest.raises(HubClientError) as info:
            viewer.send_sequence(package(ECHO))
    assert (info.value.status, info.value.code) == (403, "NOT_AUTHORIZED")
    assert "admin" in info.value.message


async def test_async_twins(hub, people) -> None:
    async with AsyncHostClient(hub.api, token=people["admin"].token) as host:
        assert (await host.get_version())["apiVersion"] == "v1"
        assert (await host.get_load_check())["memFree"] > 0
        seq = await host.send_sequence(LIFECYCLE_DIR)
        assert (await seq.get_info())["name"] == "lifecycle"
        inst = await seq.start(args=[3000, 10])
        assert [line async for line in inst.get_lines("output")] == NUMBERS
        assert await seq.list_instances() == [inst.id]
        assert inst.id in {i["id"] for i in await host.list_instances()}

        echo = await (await host.send_sequence(package(ECHO))).start()
        await echo.send_input("one\n", end=False)
        await echo.send_input(b"two\n")
        chunks = [c async for c in echo.get_stream("output")]
        assert b"".join(chunks) == b"echo:one\necho:two\n"

        events = await (await host.send_sequence(package(EVENTS))).start()
        assert await events.get_event("ready") == "yes"
        await events.send_event("ping", 1)
        assert await events.get_event("pong") == {"got": 1}

        forever_seq = await host.send_sequence(package(FOREVER))
        forever = await forever_seq.start()
        await forever.get_info()
        assert (await forever.get_health())["healthy"] in (True, False)
        await forever.kill()
        newer = await forever_seq.overwrite(package(ECHO))
        assert (await host.delete_sequence(newer.id)) == {"id": newer.id}
        with pytest.raises(HubClientError) as info:
            await host.get_sequence(newer.id)
        assert info.value.code == "NOT_FOUND"


# sequencers and sequence components

DARKNIGHT = ROOT / "examples" / "darknight"


def setup_step(command: str, **params: Any) -> dict[str, Any]:
    return {"type": "Setup", "command": command, "params": params}


def observe_step(command: str, **params: Any) -> dict[str, Any]:
    return {"type": "Observe", "command": command, "params": params}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def state(seqr: SequencerClient, wanted: str) -> dict[str, Any]:
    return wait_for(
        lambda: (d := seqr.get_info())["state"] == wanted and d,
        timeout=30,
        what=f"sequencer {seqr.id} to be {wanted}",
    )


def loaded_sequencer(host: HostClient) -> tuple[ComponentClient, SequencerClient]:
    script = host.send_sequence(DARKNIGHT)
    comp = host.create_component(unique("TST.comp"))
    answer = comp.load_script(script.id, unique("TST.seq"))
    assert answer["type"] == "SequencerLocation"
    return comp, host.get_sequencer_client(answer["sequencer"]["prefix"])


def test_components_and_their_sequencer(host: HostClient) -> None:
    script = host.send_sequence(DARKNIGHT)
    name = unique("TST.comp")
    comp = host.create_component(name)
    assert isinstance(comp, ComponentClient) and comp.name == name
    assert comp.get_status() == {"name": name, "state": "Idle", "sequencer": None, "reason": ""}
    assert name in {c["name"] for c in host.list_components()}
    prefix = unique("TST.seq")
    located = comp.load_script(script.id, prefix)
    assert located["sequencer"]["prefix"] == prefix
    assert located["sequencer"]["script"]["name"] == "darknight"
    assert comp.get_status()["state"] == "Running"
    assert prefix in {s["prefix"] for s in host.list_sequencers()}
    first_id = located["sequencer"]["id"]
    assert host.get_component_client(name).get_status()["sequencer"]["id"] == first_id
    with pytest.raises(HubClientError) as info:
        comp.load_script(script.id, unique("TST.seq"))  # Running: ignored, Unhandled
    assert info.value.status == 409 and info.value.body["type"] == "Unhandled"
    fresh = comp.restart()
    assert fresh["type"] == "SequencerLocation" and fresh["sequencer"]["id"] != first_id
    assert comp.unload_script() == {"type": "Ok"}
    assert comp.get_status()["state"] == "Idle"
    with pytest.raises(HubClientError) as info:
        comp.restart()  # nothing to restart in Idle
    assert info.value.status == 409
    with pytest.raises(HubClientError) as info:
        host.get_component_client(unique("TST.none")).get_status()
    assert info.value.code == "NOT_FOUND"


def test_sequencer_editor_commands(host: HostClient) -> None:
    _, seqr = loaded_sequencer(host)
    info = seqr.get_info()
    assert info["state"] == "Idle" and info["stepList"] is None
    assert SequencerClient.from_id(info["id"], host).get_info()["prefix"] == seqr.id
    assert seqr.load_sequence([setup_step("move"), observe_step("expose")]) == {"type": "Ok"}
    assert seqr.add({"commands": [observe_step("readout")]}) == {"type": "Ok"}
    assert seqr.prepend([setup_step("configure", filter="H")]) == {"type": "Ok"}
    steps = seqr.get_info()["stepList"]
    assert [s["command"] for s in steps] == ["configure", "move", "expose", "readout"]
    configure, move, expose, readout = (s["id"] for s in steps)
    assert seqr.replace(move, [setup_step("slew", ra="1")]) == {"type": "Ok"}
    assert seqr.insert_after(configure, [setup_step("wait", sleep=0)]) == {"type": "Ok"}
    assert seqr.delete(readout) == {"type": "Ok"}
    assert seqr.add_breakpoint(expose) == {"type": "Ok"}
    steps = seqr.get_info()["stepList"]
    assert [s["command"] for s in steps] == ["configure", "wait", "slew", "expose"]
    assert [s["hasBreakpoint"] for s in steps] == [False, False, False, True]
    assert seqr.remove_breakpoint(expose) == {"type": "Ok"}
    with pytest.raises(HubClientError) as info:
        seqr.delete("no-such-step")
    assert (info.value.status, info.value.body) == (
        404,
        {"type": "IdDoesNotExist", "id": "no-such-step"},
    )
    assert seqr.reset() == {"type": "Ok"}
    assert seqr.get_info()["state"] == "Idle"
    with pytest.raises(HubClientError) as info:
        seqr.pause()
    assert info.value.status == 409
    assert info.value.message == "Sequencer can not accept 'Pause' message in 'Idle' state"
    commands = [t["command"] for t in seqr.get_transitions()]
    # State changes only: Idle → Loaded → Idle.
    assert commands[:2] == ["LoadScript", "loadSequence"] and commands[-1] == "reset"


def test_sequencer_runs_and_lifecycle(host: HostClient) -> None:
    _, seqr = loaded_sequencer(host)
    assert seqr.go_offline() == {"type": "Ok"}
    assert seqr.get_info()["state"] == "Offline"
    assert seqr.go_online() == {"type": "Ok"}
    assert seqr.diagnostic_mode("2026-01-01T00:00:00Z", "check") == {"type": "Ok"}
    assert seqr.operations_mode() == {"type": "Ok"}

    assert seqr.load_sequence([setup_step("move", sleep=0), observe_step("expose", exposure=0)])
    started = seqr.start_sequence()
    assert started["type"] == "Started"
    final = seqr.query_final(started["runId"], timeout=30)
    assert final == {"type": "Completed", "runId": started["runId"]}
    assert seqr.query(started["runId"])["type"] == "Completed"
    assert [s["status"] for s in seqr.get_info()["stepList"]] == ["Success", "Success"]

    run = seqr.submit(
        [
            setup_step("wait", sleep=1.5),
            setup_step("wait", sleep=1.5),
            observe_step("expose", exposure=0),
        ]
    )
    assert run["type"] == "Started"
    state(seqr, "Running")
    assert seqr.query(run["runId"])["type"] == "Started"
    assert seqr.pause() == {"type": "Ok"}
    assert seqr.resume() == {"type": "Ok"}
    assert seqr.abort_sequence() == {"type": "Ok"}
    assert seqr.query_final(run["runId"], timeout=30)["type"] in ("Completed", "Error")
    state(seqr, "Idle")

    stopped = seqr.submit([setup_step("wait", sleep=1), setup_step("wait", sleep=1)])
    state(seqr, "Running")
    assert seqr.stop() == {"type": "Ok"}
    seqr.query_final(stopped["runId"], timeout=30)

    events = seqr.get_events()
    now = next(events)
    assert now["state"] == "Idle" and now["stepList"][0]["status"] == "Success"  # rest dropped
    assert seqr.shutdown() == {"type": "Ok"}
    later = [e["state"] for e in events]  # the stream ends once the sequencer is Killed
    assert later[-1] == "Killed"


async def test_async_sequencer_and_component(host: HostClient, hub, people) -> None:
    script = host.send_sequence(DARKNIGHT)
    async with AsyncHostClient(hub.api, token=people["admin"].token) as ahost:
        comp = await ahost.create_component(unique("TST.comp"))
        located = await comp.load_script(script.id, unique("TST.seq"))
        seqr = ahost.get_sequencer_client(located["sequencer"]["id"])
        run = await seqr.submit([setup_step("move", sleep=0)])
        assert (await seqr.query_final(run["runId"], timeout=30))["type"] == "Completed"
        assert (await seqr.get_info())["state"] == "Idle"
        states = []
        async for event in seqr.get_events():
            states.append(event["state"])
            if len(states) == 1:
                await seqr.shutdown()
        assert states[0] == "Idle" and states[-1] == "Killed"
        assert (await comp.get_status())["name"] == comp.name
        assert located["sequencer"]["prefix"] not in {
            s["prefix"] for s in await ahost.list_sequencers() if s["state"] != "Killed"
        }
        assert await ahost.list_components()
