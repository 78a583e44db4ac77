"""Sequences and topics, real children on a real hub: a Python producer and consumer, a JS pair,
topics named in the start body, what the worker refuses, and /input refused with STH's 405."""

from __future__ import annotations

import textwrap
import time
import uuid

import httpx
import pytest

from tests.packaging import python_package, upload
from tests.runner.test_instances_api import info, read, start, wait_ended
from tests.runner.test_node_instances import js_package

pytestmark = pytest.mark.django_db(transaction=True)

PY_PRODUCER = """
provides = {"provides": "TOPIC", "contentType": "application/x-ndjson"}

async def run(context, input, count=100):
    for n in range(count):
        yield {"n": n}
"""

PY_CONSUMER = """
requires = {"requires": "TOPIC", "contentType": "application/x-ndjson"}

async def run(context, input, count=100):
    async for item in input:
        yield f"got {item['n']}\\n"
        if item["n"] == count - 1:
            return
"""

JS_PRODUCER = """
const { Readable } = require('stream');
module.exports = function (input, count) {
    const out = Readable.from((function* () { for (let n = 0; n < count; n++) yield { n }; })());
    out.topic = 'TOPIC';
    out.contentType = 'application/x-ndjson';
    return out;
};
"""

JS_CONSUMER = """
module.exports = [
    { requires: 'TOPIC', contentType: 'application/x-ndjson' },
    async function* (input, count) {
        for await (const item of input) {
            yield `got ${item.n}\\n`;
            if (item.n === count - 1) return;
        }
    },
];
"""

# Publishes whatever the start body says, as plain lines, and reads input as text.
PY_LINES = """
async def run(context, input, count=0):
    if count:  # a producer: its lines, then done
        for n in range(count):
            yield f"line {n}\\n"
        return
    async for line in input:
        yield "echo " + line
"""


def topic_name() -> str:
    return f"seq-{uuid.uuid4().hex[:10]}"


def expected(count: int) -> list[str]:
    return [f"got {n}" for n in range(count)]


def run(api: httpx.Client, package: bytes, args: list, **body) -> str:
    return start(api, upload(api, package), args, **body)


def test_a_python_producer_feeds_a_python_consumer(admin_api):
    name = topic_name()
    producer = python_package(PY_PRODUCER.replace("TOPIC", name))
    consumer = python_package(PY_CONSUMER.replace("TOPIC", name))
    # The consumer first: it waits for data; the producer's output goes to the topic.
    cid = run(admin_api, consumer, [100])
    pid = run(admin_api, producer, [100])
    assert read(admin_api, cid, "output").decode().split("\n")[:-1] == expected(100)
    assert wait_ended(admin_api, pid)["status"] == "completed"
    assert wait_ended(admin_api, cid)["status"] == "completed"
    assert info(admin_api, pid)["provides"] == name
    assert info(admin_api, cid)["requires"] == name
    # What it published is in the topic, not in its own output.
    assert read(admin_api, pid, "output") == b""


def test_a_late_python_consumer_reads_what_the_topic_kept(admin_api):
    name = topic_name()
    pid = run(admin_api, python_package(PY_PRODUCER.replace("TOPIC", name)), [50])
    assert wait_ended(admin_api, pid)["status"] == "completed"
    cid = run(admin_api, python_package(PY_CONSUMER.replace("TOPIC", name)), [50])
    assert read(admin_api, cid, "output").decode().split("\n")[:-1] == expected(50)


def test_a_js_producer_feeds_a_js_consumer(admin_api):
    name = topic_name()
    cid = run(admin_api, js_package(JS_CONSUMER.replace("TOPIC", name)), [100])
    pid = run(admin_api, js_package(JS_PRODUCER.replace("TOPIC", name)), [100])
    assert read(admin_api, cid, "output").decode().split("\n")[:-1] == expected(100)
    assert wait_ended(admin_api, pid)["status"] == "completed"
    assert info(admin_api, pid)["provides"] == name
    assert info(admin_api, cid)["requires"] == name
    # A JS producer and a Python consumer speak the same topic.
    name2 = topic_name()
    cid2 = run(admin_api, python_package(PY_CONSUMER.replace("TOPIC", name2)), [20])
    run(admin_api, js_package(JS_PRODUCER.replace("TOPIC", name2)), [20])
    assert read(admin_api, cid2, "output").decode().split("\n")[:-1] == expected(20)


def test_topics_named_in_the_start_body_and_input_refused_with_405(admin_api):
    name = topic_name()
    # Made first for plain lines: a topic a start body makes is ndjson, STH's default.
    made = admin_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    assert made.status_code == 200
    package = python_package(PY_LINES)
    cid = run(admin_api, package, [0], inputTopic=name)
    assert info(admin_api, cid)["requires"] == name
    refused = admin_api.post(
        f"/instance/{cid}/input", content=b"x\n", headers={"Content-Type": "text/plain"}
    )
    assert refused.status_code == 405, refused.text
    assert "Input provided in other way" in refused.json()["error"]
    pid = run(admin_api, package, [3], outputTopic=name)
    assert wait_ended(admin_api, pid)["status"] == "completed"
    # The producer's lines reach the consumer through the topic; the topic's end ends it.
    ended = admin_api.post(f"/topic/{name}", content=b"", headers={"x-end-stream": "true"})
    assert ended.status_code == 200
    out = read(admin_api, cid, "output").decode()
    assert out == "echo line 0\necho line 1\necho line 2\n"


def test_the_starters_topic_wins_and_bad_declarations_are_refused(admin_api):
    pinned, declared = topic_name(), topic_name()
    producer = python_package(PY_PRODUCER.replace("TOPIC", declared))
    pid = run(admin_api, producer, [5], outputTopic=pinned)
    assert wait_ended(admin_api, pid)["status"] == "completed"
    log = read(admin_api, pid, "log").decode()
    assert f"provides {declared}: the output goes to {pinned}" in log
    topics = {t["topic"]: t for t in admin_api.get("/topics").json()}
    assert pinned in topics and declared not in topics
    assert topics[pinned]["chunks"] >= 1
    # A name that would make some other Redis key is refused; the output stays the instance's.
    crafted = python_package(textwrap.dedent(PY_PRODUCER).replace('"TOPIC"', '"../s:x:output"'))
    iid = run(admin_api, crafted, [2])
    assert wait_ended(admin_api, iid)["status"] == "completed"
    assert "topic declaration refused" in read(admin_api, iid, "log").decode()
    assert read(admin_api, iid, "output") == b'{"n": 0}\n{"n": 1}\n'


PY_ENDLESS = """
import asyncio

async def run(context, input):
    n = 0
    while True:
        yield f"line {n}\\n"
        n += 1
        await asyncio.sleep(0.02)
"""


def test_a_topic_deleted_under_a_producing_sequence_is_made_again_and_its_readers_end(admin_api):
    name = topic_name()
    pid = run(admin_api, python_package(PY_ENDLESS), [], outputTopic=name)
    try:
        with admin_api.stream("GET", f"/topic/{name}", timeout=30) as following:
            lines = following.iter_lines()
            assert next(lines).startswith("line ")
            assert admin_api.delete(f"/topics/{name}").status_code == 200
            deleted = time.monotonic()
            for _ in lines:  # the sequence keeps publishing; the reader must still end
                assert time.monotonic() - deleted < 8, "the reader follows a deleted topic"
        # The worker made it again with the producer's type, and a new reader gets new lines.
        listed = {t["topic"]: t for t in admin_api.get("/topics").json()}
        assert listed[name]["contentType"] == "application/x-ndjson"
        with admin_api.stream("GET", f"/topic/{name}", timeout=30) as again:
            assert next(again.iter_lines()).startswith("line ")
    finally:
        admin_api.post(f"/instance/{pid}/_kill", json={})
