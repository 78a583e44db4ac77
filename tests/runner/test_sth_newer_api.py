"""STH's newer instance API against a real hub with real children: restart, inout, entities,
and a package's default args."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import wait_for
from tests.packaging import package_bytes, python_package, upload
from tests.runner.test_instances_api import info, start
from tests.runner.test_instances_api import wait_ended as ended

pytestmark = pytest.mark.django_db(transaction=True)

COUNT = """
async def run(context, input, first=0, count=3):
    for i in range(first, first + count):
        yield f"{i}\\n"
"""

# Answers each input line at once, upper-cased, until the input ends.
ECHO = """
async def run(context, input, prefix=""):
    async for line in input:
        yield prefix + line.upper()
"""

TICKER = """
import asyncio

async def run(context, input, *args):
    print("config", context.config, "args", list(args), flush=True)
    while True:
        await asyncio.sleep(0.05)
"""


def with_default_args(code: str, args: list) -> bytes:
    meta = {"name": "defaults", "version": "1.0.0", "main": "main.py", "args": args}
    meta["engines"] = {"python3": "3"}
    return package_bytes({"main.py": code}, package_json=meta)


# -- default args from package.json -----------------------------------------------------------


def test_package_json_args_are_used_when_the_start_has_none(admin_api):
    seq = upload(admin_api, with_default_args(COUNT, [5, 2]))
    for body in ({}, {"args": []}):
        iid = admin_api.post(f"/sequence/{seq}/start", json=body).json()["id"]
        assert admin_api.get(f"/instance/{iid}/output").text == "5\n6\n"
        assert info(admin_api, iid)["args"] == [5, 2]


def test_args_in_the_start_body_win_over_the_package_defaults(admin_api):
    seq = upload(admin_api, with_default_args(COUNT, [5, 2]))
    iid = start(admin_api, seq, [1, 1])
    assert admin_api.get(f"/instance/{iid}/output").text == "1\n"
    assert info(admin_api, iid)["args"] == [1, 1]


# -- restart ----------------------------------------------------------------------------------


def test_restart_kills_the_old_and_starts_the_same_sequence_args_and_config(admin_api):
    seq = upload(admin_api, python_package(TICKER))
    old = start(admin_api, seq, [1, "two"], appConfig={"level": 3})
    response = admin_api.post(f"/instance/{old}/restart")
    assert response.status_code == 200, response.text
    new = response.json()["id"]
    assert new != old and response.json()["restartedFrom"] == old

    assert ended(admin_api, old)["terminated"]["exitcode"] == 137
    # Running once the child says it is ready, not when the start answers.
    after = wait_for(
        lambda: (d := info(admin_api, new))["status"] == "running" and d, what="the copy running"
    )
    assert (after["sequence"]["id"], after["args"], after["appConfig"]) == (
        seq,
        [1, "two"],
        {"level": 3},
    )
    assert after["restartedFrom"] == old and after["restartedAs"] is None
    assert info(admin_api, old)["restartedAs"] == new
    with admin_api.stream("GET", f"/instance/{new}/stdout") as stdout:
        assert next(stdout.iter_lines()) == "config {'level': 3} args [1, 'two']"

    # An instance is restarted once: the second restart of `old` is refused, not a second copy.
    again = admin_api.post(f"/instance/{old}/restart")
    assert again.status_code == 409 and again.json()["code"] == "ALREADY_RESTARTED"
    admin_api.post(f"/instance/{new}/_kill", json={})

    from accounts.models import AuditEntry

    actions = list(
        AuditEntry.objects.filter(action="instance.restart", target=old).values_list(
            "outcome", "detail"
        )
    )
    assert ("ok", {"instance": new}) in [(o, {"instance": d.get("instance")}) for o, d in actions]
    assert any(o == "refused" for o, _ in actions)


def test_restart_of_an_ended_instance_starts_a_new_one(admin_api):
    seq = upload(admin_api, python_package(COUNT))
    old = start(admin_api, seq, [7, 1])
    ended(admin_api, old)
    response = admin_api.post(f"/instance/{old}/restart")
    assert response.status_code == 200, response.text
    new = response.json()["id"]
    assert admin_api.get(f"/instance/{new}/output").text == "7\n"
    assert ended(admin_api, new)["restartedFrom"] == old


def test_restart_needs_an_operator_and_a_known_instance(admin_api, hub, people):
    seq = upload(admin_api, python_package(COUNT))
    old = start(admin_api, seq)
    viewer = people["viewer"].headers()
    assert httpx.post(f"{hub.api}/instance/{old}/restart", headers=viewer).status_code == 403
    assert info(admin_api, old)["restartedAs"] is None
    missing = admin_api.post("/instance/no-such-instance/restart")
    assert missing.status_code == 404


# -- inout ------------------------------------------------------------------------------------


def test_inout_answers_the_body_with_the_output(admin_api):
    iid = start(admin_api, upload(admin_api, python_package(ECHO)), ["> "])
    response = admin_api.post(
        f"/instance/{iid}/inout", content=b"a\nb\n", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    assert response.text == "> A\n> B\n"
    assert ended(admin_api, iid)["terminated"]["exitcode"] == 0


def test_inout_reads_the_output_from_its_own_input_on(admin_api):
    iid = start(admin_api, upload(admin_api, python_package(ECHO)))
    headers = {"Content-Type": "text/plain", "x-end-stream": "false"}
    with admin_api.stream("POST", f"/instance/{iid}/inout", content=b"a\n", headers=headers) as r:
        assert next(r.iter_lines()) == "A"
    # The second request's answer starts after the first's output: not "A" again.
    response = admin_api.post(
        f"/instance/{iid}/inout", content=b"b\n", headers={"Content-Type": "text/plain"}
    )
    assert response.text == "B\n"


class RawRequest:
    """One HTTP/1.1 request over a plain socket, its body sent chunk by chunk while its
    answer is read: what httpx (which sends the whole body first) cannot do."""

    def __init__(self, api: httpx.Client, path: str, content_type: str = "text/plain") -> None:
        url = api.base_url
        self.sock = socket.create_connection((url.host, url.port), timeout=15)
        head = [
            f"POST {url.raw_path.decode().rstrip('/')}{path} HTTP/1.1",
            f"Host: {url.host}:{url.port}",
            f"Authorization: {api.headers['Authorization']}",
            f"Content-Type: {content_type}",
            "Transfer-Encoding: chunked",
        ]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def read_until(self, wanted: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.received:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no {wanted!r} in {self.received!r}") from None
            if not data:
                raise AssertionError(f"closed before {wanted!r}: {self.received!r}")
            self.received += data
        return self.received

    def close(self) -> None:
        self.sock.close()


def test_inout_is_duplex_each_line_answered_while_the_body_is_still_open(admin_api):
    """STH's /inout: output flows while the request body is still being sent."""
    iid = start(admin_api, upload(admin_api, python_package(ECHO)), ["> "])
    request = RawRequest(admin_api, f"/instance/{iid}/inout")
    try:
        request.send(b"a\n")
        assert b" 200 " in request.read_until(b"> A\n").split(b"\r\n", 1)[0]
        assert b"> B" not in request.received
        request.send(b"b\n")
        request.read_until(b"> B\n")
        request.send(b"c\n")
        request.read_until(b"> C\n")
        request.end()  # x-end-stream defaults to true: the input ends, the echo ends
        request.read_until(b"0\r\n\r\n")
    finally:
        request.close()
    assert ended(admin_api, iid)["terminated"]["exitcode"] == 0


def test_input_streams_into_the_instance_while_the_request_is_open(admin_api):
    iid = start(admin_api, upload(admin_api, python_package(ECHO)))
    request = RawRequest(admin_api, f"/instance/{iid}/input")
    try:
        request.send(b"first\n")
        wait_for(
            lambda: _output_has(admin_api, iid, "FIRST"),
            timeout=15,
            what="the first line's answer while the body is open",
        )
        request.send(b"second\n")
        request.end()
        assert b" 200 " in request.read_until(b"}").split(b"\r\n", 1)[0]
        assert b'"bytes": 13' in request.received
    finally:
        request.close()
    assert ended(admin_api, iid)["terminated"]["exitcode"] == 0
    assert admin_api.get(f"/instance/{iid}/output").text == "FIRST\nSECOND\n"


def _output_has(api: httpx.Client, iid: str, text: str) -> bool:
    """Whether the live instance's output has `text` yet (read for a moment, not followed)."""
    try:
        with api.stream("GET", f"/instance/{iid}/output", timeout=1) as response:
            seen = ""
            for chunk in response.iter_text():
                seen += chunk
                if text in seen:
                    return True
    except httpx.ReadTimeout:
        pass
    return False


def test_inout_of_an_ended_instance_is_refused(admin_api):
    iid = start(admin_api, upload(admin_api, python_package(COUNT)))
    ended(admin_api, iid)
    response = admin_api.post(
        f"/instance/{iid}/inout", content=b"x\n", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 409


def test_input_is_refused_once_the_end_is_reported_though_the_row_lags(admin_api):
    """GET /instance says "completed" as soon as the worker's signed end is in Redis, a moment
    before its batched write reaches the row: input, events, stop and kill sent then are
    refused as they would be after."""
    from sequences.models import Instance

    iid = start(admin_api, upload(admin_api, python_package(COUNT)))
    ended(admin_api, iid)
    wait_for(lambda: not Instance.objects.get(pk=iid).is_live, what="the row to say it ended")
    Instance.objects.filter(pk=iid).update(status="running")  # the row, a moment earlier
    assert admin_api.get(f"/instance/{iid}").json()["status"] == "completed"
    for route in ("input", "inout"):
        response = admin_api.post(
            f"/instance/{iid}/{route}", content=b"x\n", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 409, (route, response.text)
    # Nor is an event, a stop or a kill taken (each answered as if the instance still ran).
    for route, body in (("_event", {"eventName": "e"}), ("_stop", {}), ("_kill", {})):
        response = admin_api.post(f"/instance/{iid}/{route}", json=body)
        assert response.status_code == 409, (route, response.text)
        assert response.json()["code"] == "NOT_RUNNING", (route, response.text)


# -- entities ---------------------------------------------------------------------------------


def test_entities_lists_sequences_and_instances_as_their_own_routes(admin_api):
    seq = upload(admin_api, python_package(COUNT))
    iid = start(admin_api, seq)
    entities = admin_api.get("/entities").json()
    assert set(entities) == {"sequences", "instances"}
    described = {s["id"]: s for s in entities["sequences"]}
    assert iid in described[seq]["instances"]
    assert iid in [i["id"] for i in entities["instances"]]
    assert described[seq] == next(s for s in admin_api.get("/sequences").json() if s["id"] == seq)
