"""Topics through this project's clients against a live hub: the Python client's topic calls
(sync and async), `si topic` as subprocesses, and sequences publishing to and reading from
topics named at start (docs/topics.md)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from client import AsyncHostClient, HostClient, HubClientError
from tests.client.conftest import ECHO, LIFECYCLE_DIR, package, wait_connected
from tests.client.test_client import in_thread
from tests.conftest import wait_for

# Live tests: a hub under load (CI runs the whole suite on one machine) can be slow.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def listed(host: HostClient, name: str) -> dict:
    found = [t for t in host.get_topics() if t["topic"] == name]
    assert found, name
    return found[0]


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def test_topic_calls(host: HostClient, tmp_path: Path) -> None:
    name = new_name()
    made = host.create_topic(name, "text/plain")
    assert (made["id"], made["contentType"]) == (name, "text/plain")
    assert listed(host, name)["contentType"] == "text/plain"
    with pytest.raises(HubClientError) as info:
        host.create_topic(name, "text/plain")
    assert info.value.status == 400

    # Bytes, text, an iterable of chunks and a binary file; no type means the topic's own.
    assert host.send_named_data(name, b"one\n")["bytes"] == 4
    host.send_named_data(name, "two\n", "text/plain")
    host.send_named_data(name, iter([b"thr", b"ee\n"]))
    data = tmp_path / "four.txt"
    data.write_bytes(b"four\n")
    with data.open("rb") as fh:
        host.send_named_data(name, fh)
    with pytest.raises(HubClientError) as info:
        host.send_named_data(name, b"{}\n", "application/x-ndjson")
    assert info.value.status == 415

    # A late reader gets what the topic keeps; one from now only what comes next; both end
    # when the stream is ended.
    late, late_box = in_thread(lambda: b"".join(host.get_named_data(name)))
    now, now_box = in_thread(lambda: b"".join(host.get_named_data(name, from_now=True)))
    wait_for(lambda: listed(host, name)["consumers"] >= 2, what="two consumers")
    assert host.send_named_data(name, io.BytesIO(b"five\n"), end=True)["end"] is True
    late.join(30)
    now.join(30)
    assert late_box == [b"one\ntwo\nthree\nfour\nfive\n"]
    assert now_box == [b"five\n"]
    assert listed(host, name)["bytes"] == len(b"one\ntwo\nthree\nfour\nfive\n")

    assert host.delete_topic(name)["message"]
    assert name not in {t["topic"] for t in host.get_topics()}
    with pytest.raises(HubClientError) as info:
        host.delete_topic(name)
    assert info.value.code == "NOT_FOUND"


def test_sequences_publish_to_and_read_from_topics(host: HostClient) -> None:
    published, fed = new_name(), new_name()
    seq = host.send_sequence(LIFECYCLE_DIR)
    inst = seq.start(args=[0, 5], output_topic=published)
    assert inst.get_info()["provides"] == published
    reader = host.get_named_data(published)
    lines: list[str] = []
    for chunk in reader:
        lines += chunk.decode().split()
        if len(lines) >= 5:
            break
    assert lines == ["0", "1", "2", "3", "4"]

    host.create_topic(fed, "text/plain")
    echo = host.send_sequence(package(ECHO)).start(input_topic=fed)
    # Sent and ended the moment the start returns: the sequence still reads all of it (the
    # start fixed where its input begins, whenever the worker begins to read).
    host.send_named_data(fed, b"a\nb\n", end=True)
    assert b"".join(echo.get_stream("output")) == b"echo:a\necho:b\n"


async def test_async_topic_calls(hub, people) -> None:
    name = new_name()
    async with AsyncHostClient(hub.api, token=people["admin"].token) as host:
        assert (await host.create_topic(name))["contentType"] == "application/x-ndjson"
        assert name in {t["topic"] for t in await host.get_topics()}

        async def chunks():
            yield b'{"n": 1}\n'
            yield b'{"n": 2}\n'

        async def collect() -> bytes:
            return b"".join([c async for c in host.get_named_data(name)])

        # Read before the end: a reader that comes after an end starts after it.
        reader = asyncio.create_task(collect())
        for _ in range(200):
            if any(t["topic"] == name and t["consumers"] for t in await host.get_topics()):
                break
            await asyncio.sleep(0.05)
        await host.send_named_data(name, chunks())
        await host.send_named_data(name, b'{"n": 3}\n', "application/x-ndjson", end=True)
        got = await asyncio.wait_for(reader, 30)
        assert [json.loads(line) for line in got.splitlines()] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert (await host.delete_topic(name))["message"]


def si_consumers(si, name: str) -> int:
    topics = json.loads(out(si("topic", "ls", "--json")))
    return sum(t["consumers"] for t in topics if t["topic"] == name)


def test_si_topic_commands(si, tmp_path: Path) -> None:
    name = new_name()
    assert out(si("topic", "create", name, "-t", "text/plain")).startswith(f"created {name}")
    assert name in out(si("topic", "ls"))
    assert name in {t["topic"] for t in json.loads(out(si("topic", "ls", "--json")))}
    refused = si("topic", "create", name, check=False)
    assert refused.returncode == 1 and b"TOPIC_EXISTS" in refused.stderr

    data = tmp_path / "lines.txt"
    data.write_bytes(b"one\ntwo\n")
    assert out(si("topic", "send", name, str(data))) == ""
    reader = si.popen("topic", "get", name)
    follower = si.popen("topic", "get", name, "--from-now")
    wait_connected(reader.pid, si.env["SI_API_URL"])
    wait_connected(follower.pid, si.env["SI_API_URL"])
    wait_for(lambda: si_consumers(si, name) >= 2, what="two readers")
    sent = json.loads(out(si("topic", "send", name, "--end", "--json", input=b"three\n")))
    assert sent == {"accepted": True, "bytes": 6, "end": True}
    stdout, _ = follower.communicate(timeout=30)
    assert (follower.returncode, stdout) == (0, b"three\n")
    stdout, _ = reader.communicate(timeout=30)
    assert (reader.returncode, stdout) == (0, b"one\ntwo\nthree\n")

    wrong = si("topic", "send", name, "-t", "application/x-ndjson", input=b"{}\n", check=False)
    assert wrong.returncode == 1 and b"415" in wrong.stderr
    assert json.loads(out(si("topic", "delete", name, "--json")))["message"]
    gone = si("topic", "rm", name, check=False)
    assert gone.returncode == 1 and b"NOT_FOUND" in gone.stderr


def test_si_sequence_output_to_a_topic_read_with_si_topic_get(si) -> None:
    name = new_name()
    si("seq", "send", str(LIFECYCLE_DIR))
    iid = out(si("seq", "start", "-", "--args", "[0, 5]", "--output-topic", name)).strip()
    assert json.loads(out(si("inst", "info", iid, "--json")))["provides"] == name
    wait_for(
        lambda: json.loads(out(si("inst", "info", iid, "--json")))["status"] == "completed",
        timeout=60,
        what="the publisher to end",
    )
    # The topic outlives its producer: a reader follows it until someone ends its stream.
    reader = si.popen("topic", "get", name)
    wait_connected(reader.pid, si.env["SI_API_URL"])
    si("topic", "send", name, "--end", input=b"")
    stdout, _ = reader.communicate(timeout=30)
    assert stdout.split() == [b"0", b"1", b"2", b"3", b"4"]

    fed = new_name()
    si("topic", "create", fed, "-t", "text/plain")
    echo = si.config_dir / "echo.tar.gz"
    echo.write_bytes(package(ECHO))
    si("seq", "send", str(echo))
    si("seq", "start", "-", "--input-topic", fed)
    wait_for(lambda: si_consumers(si, fed), what="the sequence to read the topic")
    si("topic", "send", fed, "-e", input=b"x\ny\n")
    assert out(si("inst", "output", "-")) == "echo:x\necho:y\n"
