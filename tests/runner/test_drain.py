"""Draining workers: refusals (404, 400 naming the deadline, 403); a drained worker takes no
more starts, lets its instances finish (or stops them and its sequencers at the deadline, saying
why), then exits; a rolling restart of every worker under a steady load of starts loses no start
and no line; runhub replaces a drained worker."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from client import HostClient
from tests.client.conftest import make_si
from tests.conftest import ProcessHandle, start_worker, wait_for
from tests.packaging import python_package, upload
from tests.sequences.sequencer_kit import example_package

pytestmark = pytest.mark.django_db(transaction=True)

LINES = 15
COUNTER = f"""
import time
def run(context, input, *args):
    for i in range({LINES}):
        print(f"line {{i}}", flush=True)
        time.sleep(0.03)
"""
FOREVER = """
import asyncio
async def run(context, input):
    while True:
        await asyncio.sleep(0.2)
"""
EXPECTED = "".join(f"line {i}\n" for i in range(LINES)).encode()


def _workers(api: httpx.Client) -> list[dict]:
    response = api.get("/workers")
    assert response.status_code == 200, response.text
    return response.json()


def _name_of(api: httpx.Client, handle: ProcessHandle) -> str:
    """The name the worker process `handle` registered with."""
    return wait_for(
        lambda: next((w["name"] for w in _workers(api) if w["pid"] == handle.proc.pid), None),
        timeout=90,
        what=f"worker pid {handle.proc.pid} to register",
    )


def _room(queue: str, draining: bool = True) -> dict[str, int]:
    from sequences import live

    entries = live.sync_client().hgetall(live.room_key(queue))
    return live.live_room(entries, time.time(), draining)


def _has_room(queue: str, name: str) -> bool:
    return _room(queue).get(name, 0) > 0


def _info(api: httpx.Client, iid: str) -> dict:
    response = api.get(f"/instance/{iid}")
    assert response.status_code == 200, response.text
    return response.json()


def _ended(api: httpx.Client, iid: str, timeout: float = 40) -> dict:
    return wait_for(
        lambda: (d := _info(api, iid))["status"] in ("completed", "errored", "lost") and d,
        timeout=timeout,
        what=f"instance {iid} to end",
    )


def _exits(handle: ProcessHandle, timeout: float = 60) -> int:
    wait_for(lambda: handle.proc.poll() is not None, timeout=timeout, what="the worker to exit")
    return handle.proc.returncode


class Load:
    """Starts, one after another, from a thread, until stopped: what each answered, and when
    (to tell starts before and after a drain apart)."""

    def __init__(self, api_url: str, headers: dict[str, str], seq: str) -> None:
        self.api = httpx.Client(base_url=api_url, headers=headers, timeout=150)
        self.seq = seq
        self.started: list[tuple[float, str]] = []  # (when the start was sent, id)
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)
        self.api.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            response = self.api.post(f"/sequence/{self.seq}/start", json={})
            if response.status_code == 200:
                self.started.append((sent, response.json()["id"]))
            else:
                self.refused.append(f"{response.status_code} {response.text[:200]}")
            time.sleep(0.25)


def _check_refusals(hub, name: str, people, si) -> None:
    """404 for an unknown worker (before the body is read), 400 naming the deadline, 403 for
    an operator; none of them drains anything."""
    response = hub.api.post("/worker/nobody-here/drain", json={"deadline": "soon"})
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "NOT_FOUND"
    assert hub.api.get("/worker/nobody-here").status_code == 404
    for bad in ("soon", -1, True, 1e12):
        response = hub.api.post(f"/worker/{name}/drain", json={"deadline": bad})
        assert response.status_code == 400, response.text
        assert "deadline" in response.json()["error"]
    response = hub.api.post(f"/worker/{name}/drain", content=b"[1]")
    assert response.status_code == 400, response.text
    operator = {"Authorization": f"Bearer {people['operator'].token}"}
    response = httpx.post(
        f"{hub.api.base_url}worker/{name}/drain", json={"deadline": 1}, headers=operator
    )
    assert response.status_code == 403, response.text
    listed = json.loads(si("--json", "worker", "ls").stdout)
    assert [w["state"] for w in listed if w["name"] == name] == ["live"]
    result = si("worker", "drain", "nobody-here", check=False)
    assert result.returncode == 1 and b"NOT_FOUND" in result.stderr + result.stdout
    result = si("worker", "drain", name, "--deadline", "soon", check=False)
    assert result.returncode == 2 and b"seconds" in result.stderr
    shown = hub.api.get(f"/worker/{name}").json()
    assert shown["state"] == "live" and shown["draining"] is None
    assert hub.workers[0].proc.poll() is None


def test_deadline_stops_instances_and_sequencers_and_a_waiting_start_goes_to_the_next_worker(
    private_hub, tmp_path, people
):
    from accounts.models import AuditEntry

    hub = private_hub(web_env={"HUB_START_TIMEOUT": "120"})
    first = hub.workers[0]
    name = _name_of(hub.api, first)
    si = make_si(tmp_path / "si", str(hub.api.base_url), people["admin"].token)
    _check_refusals(hub, name, people, si)
    seq = upload(hub.api, python_package(FOREVER))
    response = hub.api.post(f"/sequence/{seq}/start", json={})
    assert response.status_code == 200, response.text
    iid = response.json()["id"]
    comp = f"TST.drain{int(time.time() * 1000) % 100000}"
    assert hub.api.post("/components", json={"name": comp}).status_code == 201
    script = upload(hub.api, example_package("darknight"))
    response = hub.api.post(
        f"/component/{comp}/load-script", json={"sequence": script, "prefix": f"{comp}.seq"}
    )
    assert response.status_code == 200, response.text
    sequencer = response.json()["sequencer"]
    detail = wait_for(
        lambda: (d := hub.api.get(f"/worker/{name}").json())["instances"] and d,
        what="the worker to list its instance",
    )
    assert detail["instances"] == [iid]
    assert [s["id"] for s in detail["sequencers"]] == [sequencer["id"]]

    taken = json.loads(si("--json", "worker", "drain", name, "--deadline", "1").stdout)
    assert taken["state"] == "draining" and taken["name"] == name
    assert AuditEntry.objects.filter(action="worker.drain", target=name, outcome="ok").exists()
    # The only worker drains: a start now waits (not 507) for the worker that takes its place.
    answers: list[httpx.Response] = []

    def start_one() -> None:
        with httpx.Client(base_url=hub.api.base_url, headers=hub.api.headers, timeout=150) as api:
            answers.append(api.post(f"/sequence/{seq}/start", json={}))

    waiting = threading.Thread(target=start_one)
    waiting.start()
    ended = _ended(hub.api, iid)
    assert ended["status"] == "completed"
    reason = ended["terminated"]["reason"]
    assert "drained" in reason and name in reason, ended
    # Its outcome: stopped, by the drain's deadline (issue 17, item 1).
    assert (ended["outcome"], ended["endedBy"]["kind"]) == ("stopped", "drain"), ended
    killed = wait_for(
        lambda: (
            (s := hub.api.get(f"/sequencer/{sequencer['id']}").json())["state"] == "Killed" and s
        ),
        what="the sequencer to end Killed",
    )
    assert "drained" in killed["reason"] and name in killed["reason"], killed
    assert _exits(first) == 0
    row = hub.api.get(f"/worker/{name}").json()
    assert row["state"] == "drained" and row["drained"], row
    # Its room went with it: no write pending at its shutdown put it back (full, for a while).
    from sequences import live

    assert name.encode() not in live.sync_client().hgetall(live.room_key(hub.queue))
    assert waiting.is_alive()  # nobody took it: it waits for a worker
    hub.workers.append(start_worker(tmp_path, "worker2", HUB_QUEUE=hub.queue))
    waiting.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    second = _name_of(hub.api, hub.workers[1])
    started = answers[0].json()["id"]
    assert wait_for(lambda: _info(hub.api, started)["worker"], what="its worker") == second
    hub.api.post(f"/instance/{started}/_kill", json={})
    # A drained worker cannot be drained again.
    response = hub.api.post(f"/worker/{name}/drain", json={})
    assert response.status_code == 409, response.text


def test_rolling_restart_under_load_loses_no_start_and_no_line(private_hub, tmp_path, people):
    hub = private_hub()
    seq = upload(hub.api, python_package(COUNTER))
    handles = [hub.workers[0], start_worker(tmp_path, "w-b", HUB_QUEUE=hub.queue)]
    hub.workers.append(handles[1])
    names = [_name_of(hub.api, h) for h in handles]
    wait_for(lambda: all(_has_room(hub.queue, n) for n in names), what="both workers' room")
    drained_at: dict[str, float] = {}
    client = HostClient(str(hub.api.base_url), token=people["admin"].token)
    with Load(str(hub.api.base_url), dict(hub.api.headers), seq) as load:
        time.sleep(2)
        for round_, (handle, name) in enumerate(zip(list(handles), names, strict=True)):
            taken = client.drain_worker(name, deadline=60)
            assert taken["state"] == "draining"
            drained_at[name] = time.monotonic()
            assert _room(hub.queue).get(name) == 0
            assert name not in _room(hub.queue, draining=False)  # not room, not "full"
            assert _exits(handle) == 0
            replacement = start_worker(tmp_path, f"w-next{round_}", HUB_QUEUE=hub.queue)
            hub.workers.append(replacement)
            new_name = _name_of(hub.api, replacement)
            wait_for(lambda n=new_name: _has_room(hub.queue, n), timeout=90, what="its room")
            time.sleep(1)
    assert not load.refused, load.refused
    assert len(load.started) > 20
    workers_of = {}
    for _, iid in load.started:
        done = _ended(hub.api, iid)
        assert done["status"] == "completed", done
        workers_of[iid] = done["worker"]
        stdout = hub.api.get(f"/instance/{iid}/stdout")
        assert stdout.content == EXPECTED, (iid, stdout.content)
    # No start sent after a worker took its drain ran on that worker.
    for sent, iid in load.started:
        for name, at in drained_at.items():
            if sent > at:
                assert workers_of[iid] != name, (iid, name)
    for name in names:
        assert client.get_worker(name)["state"] == "drained"
    client.close()


def test_runhub_replaces_a_drained_worker(tmp_path):
    """`make run` on one machine: draining its only worker is a rolling restart of it; a start
    sent meanwhile waits for the replacement rather than failing."""
    from tests.dashboard.test_settings_and_runhub import launch_runhub, stop_runhub

    hub = launch_runhub(tmp_path, "drain-pass-1")
    proc, log = hub.proc, hub.log
    try:
        api = hub.api(timeout=120)
        live = lambda: [w for w in api.get("/workers").json() if w["state"] == "live"]  # noqa: E731
        old = wait_for(live, timeout=60, what="runhub's worker")[0]["name"]
        seq = upload(api, python_package(COUNTER))
        assert api.post(f"/sequence/{seq}/start", json={}).status_code == 200
        assert api.post(f"/worker/{old}/drain", json={"deadline": 30}).status_code == 200
        answer = api.post(f"/sequence/{seq}/start", json={})
        assert answer.status_code == 200, answer.text
        iid = answer.json()["id"]
        assert _ended(api, iid)["status"] == "completed"
        assert api.get(f"/instance/{iid}/stdout").content == EXPECTED
        new = [w["name"] for w in live()]
        assert new and old not in new
        assert api.get(f"/worker/{old}").json()["state"] == "drained"
        assert "starting its replacement" in log.read_text()
        assert proc.poll() is None
        api.close()
    finally:
        stop_runhub(hub)
