"""Topics through the API on a real hub: STH's routes and wire forms, and the semantics
docs/topics.md promises (order, late readers, several producers and consumers, back-pressure,
ends, deletion while in use)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import httpx
import pytest

from sequences.topics import LineAligner
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
NDJSON = {"Content-Type": "application/x-ndjson"}


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def send(api: httpx.Client, name: str, body: bytes, end: bool = False, **headers: str):
    headers = {**NDJSON, **headers}
    if end:
        headers["x-end-stream"] = "true"
    return api.post(f"/topic/{name}", content=body, headers=headers)


class Reader(threading.Thread):
    """Follows a topic in the background, collecting its lines until it ends or is closed."""

    def __init__(
        self, api: httpx.Client, name: str, since: str = "start", group: str | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.api, self.name, self.since = api, name, since
        self.params = {"from": since} if group is None else {"from": since, "group": group}
        self.lines: list[str] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            with self.api.stream(
                "GET", f"/topic/{self.name}", params=self.params, timeout=60
            ) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.opened.set()
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
        except httpx.HTTPError:
            pass  # the test ended and closed its client under this reader
        finally:
            self.opened.set()
            self.ended.set()

    def wait_lines(self, count: int, timeout: float = 20) -> list[str]:
        wait_for(lambda: len(self.lines) >= count, timeout=timeout, what=f"{count} lines")
        return self.lines


def reader(api: httpx.Client, name: str, since: str = "start", group: str | None = None) -> Reader:
    r = Reader(api, name, since, group)
    r.start()
    assert r.opened.wait(10)
    return r


def topic(api: httpx.Client, name: str) -> dict:
    found = [t for t in api.get("/topics").json() if t["topic"] == name]
    assert found, name
    return found[0]


def test_create_list_delete_in_sths_wire_forms(operator_api, admin_api):
    name = new_name()
    made = operator_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    assert made.status_code == 200, made.text
    assert made.json()["id"] == name and made.json()["contentType"] == "text/plain"
    listed = topic(operator_api, name)
    assert listed["topicName"] == name and listed["contentType"] == "text/plain"
    assert listed["producers"] == listed["consumers"] == 0
    again = operator_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    assert again.status_code == 400 and "already exist" in again.json()["error"]
    for body in ({"content-type": "text/plain"}, {"id": name}, {"id": "x", "content-type": "a/b"}):
        assert operator_api.post("/topics", json=body).status_code == 400, body
    bad = operator_api.post("/topics", json={"id": "no/slash:x", "content-type": "text/plain"})
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_TOPIC"
    gone = operator_api.delete(f"/topics/{name}")
    assert gone.status_code == 200 and gone.json() == {"message": f"Topic {name} removed"}
    assert operator_api.delete(f"/topics/{name}").status_code == 404
    assert name not in [t["topic"] for t in operator_api.get("/topics").json()]


def test_data_in_order_to_a_late_reader_and_the_end_of_stream(operator_api):
    name = new_name()
    lines = [json.dumps({"n": i}) for i in range(1000)]
    sent = send(operator_api, name, ("\n".join(lines) + "\n").encode())
    assert sent.status_code == 200, sent.text
    # Made by the send, with its type; what was sent before any reader came is kept.
    assert topic(operator_api, name)["contentType"] == "application/x-ndjson"
    late = reader(operator_api, name)
    assert late.content_type.startswith("application/x-ndjson")
    assert late.wait_lines(1000) == lines
    fresh = reader(operator_api, name, since="now")
    send(operator_api, name, b'{"n": "last"}\n', end=True)
    assert late.ended.wait(10) and fresh.ended.wait(10)
    assert late.lines[-1] == fresh.lines[-1] == '{"n": "last"}'
    assert fresh.lines == ['{"n": "last"}']
    # After an end with nothing sent since, a reader from the start reads the stream that end
    # closed and ends with it, as a reader of a file would (`si topic send --end`, then
    # `si topic get`)...
    replay = reader(operator_api, name)
    assert replay.ended.wait(10), "a late reader of an ended topic waits for more"
    assert replay.lines == [*lines, '{"n": "last"}']
    # ...and once something is sent after the end, a reader from the start begins there.
    send(operator_api, name, b'{"n": "next"}\n')
    after = reader(operator_api, name)
    send(operator_api, name, b'{"n": "more"}\n', end=True)
    assert after.ended.wait(10)
    assert after.lines == ['{"n": "next"}', '{"n": "more"}']


def test_a_producer_request_reaches_readers_line_by_line_while_it_is_open(operator_api):
    """STH streams a POST /topic body: a reader gets the first line before the producer has
    sent the second, over one request (chunked, never ended until the last line)."""
    name = new_name()
    follower = reader(operator_api, name)
    first_seen = threading.Event()
    sent_second_at: list[float] = []

    def body():
        yield b'{"n": 1}\n'
        first_seen.wait(15)  # the producer waits for the reader before going on
        sent_second_at.append(time.monotonic())
        yield b'{"n": 2}\n'
        first_seen.wait(0.2)
        yield b'{"n": 3}\n'

    result: list[httpx.Response] = []
    producer = threading.Thread(
        target=lambda: result.append(
            operator_api.post(f"/topic/{name}", content=body(), headers=NDJSON)
        ),
        daemon=True,
    )
    producer.start()
    wait_for(lambda: follower.lines, timeout=15, what="the first line while the request is open")
    seen_at = time.monotonic()
    assert follower.lines == ['{"n": 1}'] and not sent_second_at
    first_seen.set()
    producer.join(20)
    assert result and result[0].status_code == 200, result and result[0].text
    assert result[0].json() == {"accepted": True, "bytes": 27, "end": False}
    assert sent_second_at[0] > seen_at
    assert follower.wait_lines(3) == ['{"n": 1}', '{"n": 2}', '{"n": 3}']


def test_a_streamed_send_is_refused_like_any_other(operator_api, hub):
    """The streamed body passes the same checks: no token, a bad type or a bad name are
    refused before any of it reaches the topic, and the connection stays usable."""
    name = new_name()
    assert send(operator_api, name, b"{}\n").status_code == 200

    def body():
        yield b'{"bad": 1}\n'
        yield b'{"bad": 2}\n'

    with httpx.Client(base_url=hub.api, timeout=30) as anonymous:
        refused = anonymous.post(f"/topic/{name}", content=body(), headers=NDJSON)
        assert refused.status_code == 401 and refused.json()["code"] == "NEED_AUTHENTICATION"
    wrong = operator_api.post(
        f"/topic/{name}", content=body(), headers={"Content-Type": "text/plain"}
    )
    assert wrong.status_code == 415
    bad_name = operator_api.post("/topic/no:colons", content=body(), headers=NDJSON)
    assert bad_name.status_code == 400 and bad_name.json()["code"] == "INVALID_TOPIC"
    everything = reader(operator_api, name)
    assert send(operator_api, name, b'{"ok": 1}\n', end=True).status_code == 200
    assert everything.ended.wait(10)
    assert everything.lines == ["{}", '{"ok": 1}']


def test_a_request_daphne_refuses_gets_its_400_on_a_streamed_route(hub, people):
    """daphne refuses a header value with a byte it bans; a streamed route must not start the
    request early then, or the refusal is lost and the connection closes with no answer."""
    host, port = hub.url.removeprefix("http://").split(":")
    head = (
        f"POST /api/v1/topic/{new_name()} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {people['operator'].token}\r\nContent-Length: 0\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head + b"x-end-stream: a\x85b\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_a_type_that_does_not_match_is_415(operator_api):
    name = new_name()
    assert send(operator_api, name, b"{}\n").status_code == 200
    refused = send(operator_api, name, b"hi\n", **{"Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert "application/x-ndjson" in refused.json()["error"]
    unknown = send(operator_api, new_name(), b"x", **{"Content-Type": "image/png"})
    assert unknown.status_code == 415


def test_several_producers_interleave_whole_lines_and_every_consumer_reads_all(operator_api):
    name = new_name()
    operator_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    readers = [reader(operator_api, name) for _ in range(3)]
    wait_for(lambda: topic(operator_api, name)["consumers"] == 3, what="3 consumers")
    per_producer, per_body = 3000, 1500

    def produce(p: int) -> None:
        # Bodies of ~90 kB: the hub reads them in 64 KiB pieces, cut inside a line, and
        # still publishes each line whole, so the producers interleave between lines.
        for first in range(0, per_producer, per_body):
            lines = range(first, first + per_body)
            body = "".join(f"p{p}-{i:05d}-{'x' * 50}\n" for i in lines).encode()
            response = operator_api.post(
                f"/topic/{name}", content=body, headers={"Content-Type": "text/plain"}
            )
            assert response.status_code == 200

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in readers:
        got = r.wait_lines(3 * per_producer)
        assert len(got) == 3 * per_producer
        for p in range(3):
            mine = [line for line in got if line.startswith(f"p{p}-")]
            assert mine == [f"p{p}-{i:05d}-{'x' * 50}" for i in range(per_producer)]
    assert readers[0].lines == readers[1].lines == readers[2].lines


def test_a_consumer_group_shares_the_chunks_and_ends_together(operator_api):
    name = new_name()
    operator_api.post("/topics", json={"id": name, "content-type": "text/plain"})
    group = [reader(operator_api, name, group="workers") for _ in range(2)]
    alone = reader(operator_api, name)
    wait_for(lambda: topic(operator_api, name)["consumers"] == 3, what="3 consumers")
    sent = [f"line-{i:04d}" for i in range(400)]
    for i in range(0, len(sent), 10):  # 40 requests: 40 chunks for the group to share
        body = "".join(f"{line}\n" for line in sent[i : i + 10]).encode()
        assert send(operator_api, name, body, **{"Content-Type": "text/plain"}).is_success
    assert alone.wait_lines(len(sent)) == sent  # a reader outside the group reads everything
    wait_for(lambda: sum(len(r.lines) for r in group) >= len(sent), what="the group's share")
    shared = group[0].lines + group[1].lines
    assert sorted(shared) == sent  # each chunk to one reader of the group: none twice, none lost
    assert group[0].lines and group[1].lines
    send(operator_api, name, b"", end=True, **{"Content-Type": "text/plain"})
    for r in [*group, alone]:
        assert r.ended.wait(15)  # the end reaches every reader, in the group or not
    bad = operator_api.get(f"/topic/{name}", params={"group": "no spaces"})
    assert bad.status_code == 400


def test_a_slow_consumer_never_blocks_a_producer_nor_loses_data(operator_api):
    name = new_name()
    lines = [json.dumps({"i": i, "pad": "y" * 100}) for i in range(20_000)]
    body = ("\n".join(lines) + "\n").encode()
    with operator_api.stream("GET", f"/topic/{name}", timeout=60) as slow:
        assert slow.status_code == 200
        # The consumer reads nothing while 2 MB go by: the producer is not held back.
        started = time.monotonic()
        for part in range(0, len(body), 256 * 1024):
            assert send(operator_api, name, body[part : part + 256 * 1024]).status_code == 200
        assert time.monotonic() - started < 20
        got: list[str] = []
        for line in slow.iter_lines():
            if line:
                got.append(line)
            if len(got) == len(lines):
                break
    assert got == lines


def test_a_topic_deleted_while_in_use_ends_its_readers(operator_api):
    name = new_name()
    r = reader(operator_api, name)
    send(operator_api, name, b'{"a": 1}\n')
    r.wait_lines(1)
    assert operator_api.delete(f"/topics/{name}").status_code == 200
    assert r.ended.wait(15), "the reader still follows a deleted topic"
    # A producer that keeps sending makes it again, empty but for what it sends.
    send(operator_api, name, b'{"a": 2}\n')
    again = reader(operator_api, name)
    send(operator_api, name, b"", end=True)
    assert again.ended.wait(10)
    assert again.lines == ['{"a": 2}']


def test_a_topic_deleted_while_a_producer_keeps_sending(operator_api):
    name = new_name()
    stop = threading.Event()

    def body():
        n = 0
        while not stop.is_set():
            yield f'{{"n": {n}}}\n'.encode()
            n += 1
            time.sleep(0.02)

    producer = threading.Thread(target=send, args=(operator_api, name, body()), daemon=True)
    producer.start()
    try:
        following = reader(operator_api, name)
        following.wait_lines(5)
        seen = json.loads(following.lines[-1])["n"]
        assert operator_api.delete(f"/topics/{name}").status_code == 200
        # Data keeps coming, yet the reader of the deleted topic ends (docs/topics.md: within
        # five seconds).
        assert following.ended.wait(8), "the reader still follows a deleted topic"
        # The producer made it again, with its type: listed, readable, not made twice.
        wait_for(lambda: name in [t["topic"] for t in operator_api.get("/topics").json()])
        assert topic(operator_api, name)["contentType"] == "application/x-ndjson"
        made = operator_api.post("/topics", json={"id": name, "content-type": "text/plain"})
        assert made.status_code == 400, made.text
        again = reader(operator_api, name)
        # It holds what was sent after the delete, not the lines before it.
        assert json.loads(again.wait_lines(3)[0])["n"] > seen
    finally:
        stop.set()
        producer.join(10)


def test_reading_creates_the_topic_and_names_are_checked(operator_api, admin_api):
    name = new_name()
    r = reader(operator_api, name)
    assert r.status == 200
    assert topic(operator_api, name)["contentType"] == "application/x-ndjson"
    assert operator_api.get("/topic/a%3Ab").status_code == 400
    bad_type = operator_api.get(f"/topic/{new_name()}", headers={"Content-Type": "image/png"})
    assert bad_type.status_code == 415
    send(operator_api, name, b"{}\n", end=True)
    assert r.ended.wait(10)


def test_line_aligner_cuts_at_line_ends_and_passes_raw_bytes():
    lines = LineAligner("text/plain")
    assert lines.feed(b"ab") == b""
    assert lines.feed(b"c\nde") == b"abc\n"
    assert lines.feed(b"f\ng\n") == b"def\ng\n"
    assert lines.feed(b"tail") == b""
    assert lines.rest() == b"tail"
    long = b"z" * (70 * 1024)
    assert lines.feed(long) == long  # a line longer than a chunk is not held forever
    raw = LineAligner("application/octet-stream")
    assert raw.feed(b"a\nb") == b"a\nb" and raw.rest() == b""
