"""Instances end to end: a real hub (daphne + Celery worker), real Redis, real child processes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import wait_for
from tests.packaging import package_bytes, python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

LIFECYCLE = """
async def run(context, input, initialNumber=0, length=1000):
    for i in range(initialNumber, initialNumber + length):
        yield i
"""


def start(api: httpx.Client, seq_id: str, args: list | None = None, **body) -> str:
    response = api.post(f"/sequence/{seq_id}/start", json={"args": args or [], **body})
    assert response.status_code == 200, response.text
    assert response.json()["message"].endswith("starting")
    return response.json()["id"]


def run_sequence(api: httpx.Client, code: str, args: list | None = None, **body) -> str:
    return start(api, upload(api, python_package(code)), args, **body)


def read(api: httpx.Client, iid: str, stream: str) -> bytes:
    response = api.get(f"/instance/{iid}/{stream}")
    assert response.status_code == 200, response.text
    return response.content


def info(api: httpx.Client, iid: str) -> dict:
    response = api.get(f"/instance/{iid}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_ended(api: httpx.Client, iid: str, timeout: float = 20) -> dict:
    return wait_for(
        lambda: (d := info(api, iid))["status"] in ("completed", "errored", "lost") and d,
        timeout=timeout,
        what=f"instance {iid} to end",
    )


def test_lifecycle_example_outputs_exactly_3000_to_3009(admin_api):
    iid = run_sequence(admin_api, LIFECYCLE, [3000, 10])
    lines = read(admin_api, iid, "output").decode().split()
    assert lines == [str(n) for n in range(3000, 3010)]
    done = wait_ended(admin_api, iid)
    assert done["status"] == "completed"
    assert done["terminated"] == {"exitcode": 0, "reason": "Instance completed"}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def run(context, input):\n    return 'plain'\n", b"plain"),
        ("def run(context, input):\n    return ['a\\n', 'b\\n']\n", b"a\nb\n"),
        ("def run(context, input):\n    return {'k': 1}\n", b'{"k": 1}\n'),
        ("async def run(context, input):\n    return 'coro'\n", b"coro"),
        ("def run(context, input):\n    yield 'g1\\n'\n    yield 'g2\\n'\n", b"g1\ng2\n"),
        ("async def run(context, input):\n    yield b'raw'\n", b"raw"),
        ("def run(context, input):\n    return None\n", b""),
    ],
    ids=["str", "list", "dict", "coroutine", "generator", "async-generator-bytes", "none"],
)
def test_each_shape_of_run_becomes_output(admin_api, code, expected):
    iid = run_sequence(admin_api, code)
    assert read(admin_api, iid, "output") == expected
    assert wait_ended(admin_api, iid)["status"] == "completed"


def test_args_keep_their_json_types(admin_api):
    code = "def run(context, input, *args):\n    return repr(args)\n"
    iid = run_sequence(admin_api, code, [3000, "10", 1.5, None, {"a": [1]}, True])
    assert read(admin_api, iid, "output") == b"(3000, '10', 1.5, None, {'a': [1]}, True)"


def test_info_and_list_right_after_the_output_ends_say_how_it_ended(admin_api):
    # The docs' client example reads the output, then the info: the outcome must be there,
    # though the worker records it in the database a moment after the stream ends.
    seq = upload(admin_api, python_package("def run(context, input):\n    return 'x'\n"))
    for _ in range(10):
        iid = start(admin_api, seq)
        assert read(admin_api, iid, "output") == b"x"
        listed = {i["id"]: i for i in admin_api.get("/instances").json()}
        assert listed[iid]["status"] == "completed", listed[iid]
        data = info(admin_api, iid)
        assert data["status"] == "completed", data
        assert data["terminated"] == {"exitcode": 0, "reason": "Instance completed"}
        assert data["ended"] is not None


def test_stdout_output_log_and_stderr_stay_separate(admin_api):
    code = """
    import sys
    def run(context, input):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        context.logger.info("to log")
        return "to output"
    """
    iid = run_sequence(admin_api, code)
    assert read(admin_api, iid, "output") == b"to output"
    assert read(admin_api, iid, "stdout") == b"to stdout\n"
    assert read(admin_api, iid, "stderr") == b"to stderr\n"
    log = read(admin_api, iid, "log").decode()
    assert "to log" in log and "to stdout" not in log
    assert json.loads(log.splitlines()[0])["msg"] == "to log"


ECHO = """
async def run(context, input):
    async for line in input:
        yield "echo:" + line
"""


def test_input_sent_right_after_start_is_not_lost(admin_api):
    iid = run_sequence(admin_api, ECHO)
    response = admin_api.post(
        f"/instance/{iid}/input", content=b"first\nsecond\n", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200
    assert read(admin_api, iid, "output") == b"echo:first\necho:second\n"


def test_input_in_several_requests_with_x_end_stream(admin_api):
    iid = run_sequence(admin_api, ECHO)
    for text, end in (("a\n", "false"), ("b\n", "false"), ("c\n", "true")):
        response = admin_api.post(
            f"/instance/{iid}/input",
            content=text.encode(),
            headers={"Content-Type": "text/plain", "x-end-stream": end},
        )
        assert response.status_code == (200 if end == "true" else 202)
        time.sleep(0.05)
    assert read(admin_api, iid, "output") == b"echo:a\necho:b\necho:c\n"


def test_stdin_reaches_the_process(admin_api):
    code = """
    import sys
    def run(context, input):
        return "got:" + sys.stdin.read()
    """
    iid = run_sequence(admin_api, code)
    admin_api.post(f"/instance/{iid}/stdin", content=b"hello")
    assert read(admin_api, iid, "output") == b"got:hello"


def test_a_python_main_named_without_py_runs(admin_api):
    """Issue 15, item 1: "main": "main" names main.py, and the launch runs that file."""
    package = package_bytes(
        {"main.py": LIFECYCLE},
        package_json={"name": "p", "main": "./main", "engines": {"python3": "3.11"}},
    )
    iid = start(admin_api, upload(admin_api, package), [1, 2])
    assert read(admin_api, iid, "output") == b"1\n2\n"


STH_SAMPLE = """
import json, sys

with open("data.json") as f:  # beside main: the working folder is the package's
    GREETING = json.load(f)["greeting"]


async def run(context, input):
    context.set_stop_handler(lambda: print("cleaned up", flush=True))  # STH 0.18.7's form
    name = (await sys.stdin.read()).strip()  # STH's stream form; stdin stays open
    context.emit("name", name)
    # No __pypackages__: input is the scramjet Stream the hub lends.
    return input.map(lambda line: f"{GREETING} {name}: {line}")
"""


def test_an_sth_style_python_sample_runs_unmodified(admin_api):
    """Issue 15, items 2 to 5, as a sample written for STH hits them: a file beside main, the
    await form of stdin, a scramjet input without shipping scramjet, a stop handler without
    parameters."""
    package = python_package(STH_SAMPLE, **{"data.json": json.dumps({"greeting": "hello"})})
    iid = start(admin_api, upload(admin_api, package))
    admin_api.post(f"/instance/{iid}/stdin", content=b"Ada\n", headers={"x-end-stream": "false"})
    event = admin_api.get(f"/instance/{iid}/event/name", timeout=20)  # the last one, or the next
    assert event.json() == "Ada", (event.text, read(admin_api, iid, "stderr"), info(admin_api, iid))
    admin_api.post(
        f"/instance/{iid}/input",
        content=b"one\ntwo\n",
        headers={"Content-Type": "text/plain", "x-end-stream": "false"},
    )
    with admin_api.stream("GET", f"/instance/{iid}/output", timeout=20) as response:
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if seen.count(b"\n") >= 2:
                break
    assert seen == b"hello Ada: one\nhello Ada: two\n", read(admin_api, iid, "stderr")
    response = admin_api.post(f"/instance/{iid}/_stop", json={"timeout": 2000})
    assert response.status_code == 202
    done = wait_ended(admin_api, iid)
    assert done["terminated"]["exitcode"] == 138, read(admin_api, iid, "stderr")
    assert read(admin_api, iid, "stdout") == b"cleaned up\n"
    assert read(admin_api, iid, "stderr") == b""


TICKER = """
import asyncio
async def run(context, input, count=30, pause=0.02):
    for i in range(count):
        print(f"line {i}", flush=True)
        yield f"{i}\\n"
        await asyncio.sleep(pause)
"""


def test_late_reader_gets_everything_from_the_start_while_running_and_after_the_end(admin_api):
    iid = run_sequence(admin_api, TICKER, [40, 0.05])
    time.sleep(0.8)  # the reader attaches mid-run
    expected = "".join(f"{i}\n" for i in range(40)).encode()
    assert read(admin_api, iid, "output") == expected
    wait_ended(admin_api, iid)
    assert read(admin_api, iid, "output") == expected
    assert read(admin_api, iid, "stdout") == "".join(f"line {i}\n" for i in range(40)).encode()


def test_a_reader_of_a_quiet_instance_gets_the_headers_at_once(admin_api):
    quiet = "import time\ndef run(context, input):\n    time.sleep(4)\n    return 'late'\n"
    iid = run_sequence(admin_api, quiet)
    started = time.monotonic()
    # Headers within 2 s, though the first byte of output comes after 4 s.
    with admin_api.stream("GET", f"/instance/{iid}/output", timeout=2) as response:
        assert response.status_code == 200
        assert time.monotonic() - started < 2
        assert response.headers["content-type"].startswith("text/plain")
    admin_api.post(f"/instance/{iid}/_kill")


def test_two_concurrent_readers_each_get_the_whole_stream(admin_api):
    iid = run_sequence(admin_api, TICKER, [50, 0.01])
    results: list[bytes] = []

    def reader() -> None:
        results.append(read(admin_api, iid, "output"))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expected = "".join(f"{i}\n" for i in range(50)).encode()
    assert results == [expected, expected]


EVENTS = """
import asyncio
async def run(context, input):
    done = asyncio.Event()
    def on_ping(message):
        context.emit("pong", {"got": message})
        done.set()
    context.on("ping", on_ping)
    context.emit("ready", "yes")
    await asyncio.wait_for(done.wait(), 20)
    return "bye"
"""


def test_events_flow_both_ways(admin_api):
    iid = run_sequence(admin_api, EVENTS)
    assert admin_api.get(f"/instance/{iid}/event/ready").json() == "yes"
    response = admin_api.post(
        f"/instance/{iid}/_event", json=[5001, {"eventName": "ping", "message": {"n": 7}}]
    )
    assert response.status_code == 202
    assert admin_api.get(f"/instance/{iid}/event/pong").json() == {"got": {"n": 7}}
    assert read(admin_api, iid, "output") == b"bye"


FOREVER = """
import asyncio
async def run(context, input, keep=False):
    async def on_stop(timeout, can_keep_alive):
        print("stop handler", timeout, can_keep_alive, flush=True)
        if keep and can_keep_alive:
            await context.keep_alive(10)
    context.set_stop_handler(on_stop)
    while True:
        yield "tick\\n"
        await asyncio.sleep(0.05)
"""


def test_stop_calls_the_stop_handler_and_ends_the_instance(admin_api):
    iid = run_sequence(admin_api, FOREVER)
    wait_for(lambda: info(admin_api, iid)["status"] == "running", what="running")
    response = admin_api.post(
        f"/instance/{iid}/_stop", json=[4001, {"timeout": 1000, "canCallKeepalive": False}]
    )
    assert response.status_code == 202
    done = wait_ended(admin_api, iid)
    assert done["status"] == "completed"
    assert done["terminated"]["exitcode"] == 138
    assert b"stop handler 1.0 False" in read(admin_api, iid, "stdout")


def test_stop_with_keep_alive_keeps_the_instance_running(admin_api):
    iid = run_sequence(admin_api, FOREVER, [True])
    wait_for(lambda: info(admin_api, iid)["status"] == "running", what="running")
    response = admin_api.post(
        f"/instance/{iid}/_stop", json={"timeout": 500, "canCallKeepalive": True}
    )
    assert response.status_code == 202
    time.sleep(1.0)
    assert info(admin_api, iid)["status"] == "running"
    admin_api.post(f"/instance/{iid}/_kill", json={})
    assert wait_ended(admin_api, iid)["terminated"]["exitcode"] == 137


TREE = """
import subprocess, time
def run(context, input):
    procs = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    print(" ".join(str(p.pid) for p in procs), flush=True)
    time.sleep(300)
"""


def test_kill_ends_the_whole_process_tree(admin_api):
    iid = run_sequence(admin_api, TREE)
    pids = wait_for(lambda: _first_line(admin_api, iid), what="child pids")
    pids = [int(p) for p in pids.split()]
    assert all(psutil.pid_exists(p) for p in pids)
    response = admin_api.post(f"/instance/{iid}/_kill", json=[4002, {}])
    assert response.status_code == 202
    done = wait_ended(admin_api, iid)
    assert done["terminated"] == {"exitcode": 137, "reason": "Instance killed"}
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=5, what="grandchildren gone")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _first_line(api: httpx.Client, iid: str) -> str:
    with api.stream("GET", f"/instance/{iid}/stdout") as response:
        for line in response.iter_lines():
            return line
    return ""


@pytest.mark.parametrize(
    ("files", "code", "needle"),
    [
        ({"main.py": "x = 1  # defines no run\n"}, 21, ""),
        ({"main.py": "import no_such_module_here\n"}, 22, "ModuleNotFoundError"),
        (
            {"main.py": "def run(context, input):\n    raise ValueError('boom')\n"},
            23,
            "ValueError: boom",
        ),
    ],
    ids=["bad-main-21", "import-error-22", "raised-23"],
)
def test_failures_end_errored_with_their_exit_code(admin_api, files, code, needle):
    from tests.packaging import package_bytes

    seq = upload(admin_api, package_bytes(files))
    iid = start(admin_api, seq)
    done = wait_ended(admin_api, iid)
    assert done["status"] == "errored"
    assert done["terminated"]["exitcode"] == code
    assert needle.encode() in read(admin_api, iid, "stderr")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"args": "3000"}, 422, "args must be a JSON array"),
        ({"appConfig": [1]}, 422, "appConfig must be a JSON object"),
        ([1, 2], 422, "start body must be a JSON object"),
        ({"limits": {"memory": "lots"}}, 422, "limits.memory"),
        ({"limits": {"pids": 1.5}}, 422, "limits.pids must be a whole number"),
        ({"limits": {"pids": 2}}, 422, "7 is the fewest the Python and Node runtimes start"),
        ({"instanceId": "../etc"}, 422, "instanceId"),
    ],
)
def test_malformed_start_bodies_answer_invalid_config(admin_api, body, status, fragment):
    seq = upload(admin_api, python_package("def run(context, input):\n    return 'x'\n"))
    response = admin_api.post(f"/sequence/{seq}/start", json=body)
    assert response.status_code == status
    assert response.json()["code"] == "INVALID_CONFIG"
    assert fragment in response.json()["error"]
    assert "id" not in response.json()


def test_unparseable_start_body_answers_400(admin_api):
    seq = upload(admin_api, python_package("def run(context, input):\n    return 'x'\n"))
    response = admin_api.post(
        f"/sequence/{seq}/start", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_CONFIG"


def test_starting_an_unknown_sequence_answers_404(admin_api):
    response = admin_api.post("/sequence/no-such-sequence/start", json={})
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


def test_starts_through_the_api_are_audited_ok_and_refused(admin_api):
    from accounts.models import AuditEntry

    seq = upload(admin_api, python_package("def run(context, input):\n    return 'x'\n"))
    iid = start(admin_api, seq, ["a", 1])
    taken = admin_api.post(f"/sequence/{seq}/start", json={"instanceId": iid})
    assert taken.status_code == 409

    def both_entries() -> list[dict]:
        rows = AuditEntry.objects.filter(action="instance.start")
        found = list(rows.values("target", "outcome", "via", "detail"))
        return found if len(found) == 2 else []

    # The web writes its start entries in batches, a moment after answering.
    entries = wait_for(both_entries, what="both start entries")
    by_outcome = {e["outcome"]: e for e in entries}
    assert by_outcome["ok"]["target"] == iid and by_outcome["ok"]["via"] == "api"
    assert by_outcome["ok"]["detail"] == {"sequence": seq, "args": ["a", 1]}
    assert by_outcome["refused"]["target"] == seq
    assert "already exists" in by_outcome["refused"]["detail"]["error"]


def test_non_utf8_bytes_and_very_long_lines_pass_through_unchanged(admin_api):
    code = """
    import sys
    def run(context, input):
        sys.stdout.buffer.write(b"\\xff\\xfe bad bytes\\n")
        sys.stdout.flush()
        yield b"\\x80\\x81"
        yield "x" * 2_000_000 + "\\n"
    """
    iid = run_sequence(admin_api, code)
    output = read(admin_api, iid, "output")
    assert output[:2] == b"\x80\x81"
    assert output[2:] == b"x" * 2_000_000 + b"\n"
    assert read(admin_api, iid, "stdout") == b"\xff\xfe bad bytes\n"


def test_kill_with_remove_immediately_forgets_the_instance(admin_api):
    iid = run_sequence(admin_api, FOREVER)
    wait_for(lambda: info(admin_api, iid)["status"] == "running", what="running")
    admin_api.post(f"/instance/{iid}/_kill", json={"removeImmediately": True})
    wait_for(lambda: admin_api.get(f"/instance/{iid}").status_code == 404, what="removal")


def test_instance_list_info_and_health(admin_api):
    iid = run_sequence(admin_api, FOREVER)
    wait_for(lambda: info(admin_api, iid)["status"] == "running", what="running")
    health = admin_api.get(f"/instance/{iid}/health").json()
    assert health["healthy"] is True
    assert health["pid"] > 0 and health["memoryUsage"] > 0
    listed = admin_api.get("/instances").json()
    assert iid in [i["id"] for i in listed]
    data = info(admin_api, iid)
    assert data["sequence"]["name"] == "test-seq" and data["args"] == []
    admin_api.post(f"/instance/{iid}/_kill", json={})
    wait_ended(admin_api, iid)


def test_load_check_and_version(admin_api):
    load = admin_api.get("/load-check").json()
    assert load["memFree"] > 0 and load["fsSize"][0]["size"] > 0
    assert admin_api.get("/version").json()["apiVersion"] == "v1"
