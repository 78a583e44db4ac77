"""Two hubs on one Redis database: each its own database, data folder and hub id (made by
`hub_init`, read from its database), the same REDIS_URL, the same queue name and even the same
SECRET_KEY. Starts on each run only on its own worker, streams and topics do not mix, a message
for the other hub is ignored, and each says at start that it shares its Redis."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dashboard.processes import stop_process
from sequences import hubs, live
from tests.conftest import (
    ROOT,
    ProcessHandle,
    free_port,
    hub_env,
    start_web,
    start_worker,
    wait_for,
)
from tests.packaging import python_package, upload

SAYS = """
async def run(context, input, who):
    return f"{who} ran here"
"""


@dataclass
class OneHub:
    name: str
    database: str  # its DATABASE_URL
    db_name: str  # as the registry names it
    queue: str  # the same for both
    api: httpx.Client
    url: str
    web: ProcessHandle
    worker: ProcessHandle

    def hub_id(self) -> str:
        return _db_hub_id(self.database)


def _server() -> dict:
    return settings.DATABASES["default"]


def _make_database(name: str, folder: Path) -> tuple[str, str]:
    """A database of its own for one hub: (DATABASE_URL, the name the registry shows)."""
    db = _server()
    if db["ENGINE"].endswith("sqlite3"):
        path = folder / "hub.sqlite3"
        return f"sqlite:///{path}", str(path)
    import psycopg

    with psycopg.connect(**_pg_params("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{name}", name


def _pg_params(dbname: str) -> dict:
    db = _server()
    params = {
        "dbname": dbname,
        "host": db.get("HOST") or "127.0.0.1",
        "port": db.get("PORT") or 5432,
        "user": db.get("USER") or "postgres",
    }
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    return params


def _drop_database(name: str) -> None:
    if _server()["ENGINE"].endswith("sqlite3"):
        return
    import psycopg

    with psycopg.connect(**_pg_params("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _db_hub_id(url: str) -> str:
    """The hub id kept in a hub's database, read with no Django in between."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute("SELECT hub_id FROM sequences_hubidentity").fetchone()[0]
    import psycopg

    with psycopg.connect(**_pg_params(url.rsplit("/", 1)[1])) as conn:
        row = conn.execute("SELECT hub_id FROM sequences_hubidentity").fetchone()
        assert row is not None
        return row[0]


@pytest.fixture(scope="module")
def two_hubs(tmp_path_factory) -> Iterator[tuple[OneHub, OneHub]]:
    queue = f"shared-{uuid.uuid4().hex[:6]}"  # one queue name for both, as `make run` twice
    tag = uuid.uuid4().hex[:6]
    envs, folders = {}, {}
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"hub-{name}")
        database, db_name = _make_database(f"ns_{tag}_{name}", folder)
        folders[name] = folder
        envs[name] = {
            "DATABASE_URL": database,
            "HUB_DATA_DIR": str(folder / "data"),
            "HUB_ID": "",  # from its database, as a hub started without one
            "HUB_QUEUE": queue,
            "HUB_ANONYMOUS_ROLE": "admin",
            "_DB_NAME": db_name,
        }
    # hub_init makes each hub's tables and id, both at once (the machine is small).
    inits = [
        subprocess.Popen(
            [sys.executable, "manage.py", "hub_init"],
            cwd=ROOT,
            env=hub_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for env in envs.values()
    ]
    for init in inits:
        out, _ = init.communicate(timeout=300)
        assert init.returncode == 0, out.decode(errors="replace")
    started: list[OneHub] = []
    try:
        for name, env in envs.items():
            db_name = env.pop("_DB_NAME")
            worker = start_worker(folders[name], f"worker-{name}", **env)
            web = start_web(folders[name], free_port(), **env)
            url = f"http://127.0.0.1:{web.port}"
            api = httpx.Client(base_url=url + "/api/v1", timeout=60)
            started.append(OneHub(name, env["DATABASE_URL"], db_name, queue, api, url, web, worker))
        a, b = started
        yield a, b
    finally:
        for one in started:
            one.api.close()
            stop_process(one.web.proc)
            stop_process(one.worker.proc)
        for env in envs.values():
            _drop_database(env["DATABASE_URL"].rsplit("/", 1)[1])


def _start(api: httpx.Client, seq: str, who: str) -> str:
    response = api.post(f"/sequence/{seq}/start", json={"args": [who]})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _ended(api: httpx.Client, iid: str) -> dict:
    ended: dict = {}

    def done() -> bool:
        nonlocal ended
        ended = api.get(f"/instance/{iid}").json()
        return ended.get("status") in ("completed", "errored")

    wait_for(done, timeout=60, what=f"{iid} to end")
    return ended


def _registry() -> dict[str, dict]:
    raw = live.sync_client().hgetall(live.REGISTRY)
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def test_each_hub_made_its_own_id_and_says_it_is_alive(two_hubs):
    a, b = two_hubs
    ids = {a.hub_id(), b.hub_id()}
    assert len(ids) == 2 and live.hub_id() not in ids
    registry = wait_for(
        lambda: (r := _registry()) and ids <= set(r) and r, what="both hubs in the registry"
    )
    assert a.db_name in registry[a.hub_id()]["database"]
    assert b.db_name in registry[b.hub_id()]["database"]


def test_starts_run_only_on_their_own_hubs_worker(two_hubs):
    a, b = two_hubs
    seqs = {hub.name: upload(hub.api, python_package(SAYS)) for hub in (a, b)}
    started = []
    for i in range(6):
        hub = (a, b)[i % 2]
        started.append((hub, _start(hub.api, seqs[hub.name], f"{hub.name}{i}")))
    for hub, iid in started:
        ended = _ended(hub.api, iid)
        assert ended["status"] == "completed", ended
        # Its own hub's worker (named <host>-<pid>-<random>), and its own database's row.
        assert f"-{hub.worker.proc.pid}-" in ended["worker"], (hub.name, ended["worker"])
        other = b if hub is a else a
        assert other.api.get(f"/instance/{iid}").status_code == 404
        output = hub.api.get(f"/instance/{iid}/output").text
        assert f"{hub.name}{started.index((hub, iid))} ran here" in output


def test_streams_and_topics_do_not_mix(two_hubs, monkeypatch):
    a, b = two_hubs
    for hub, data in ((a, b"from a\n"), (b, b"from b, which says more\n")):
        response = hub.api.post(
            "/topic/shared-news", content=data, headers={"Content-Type": "text/plain"}
        )
        assert response.status_code in (200, 202, 204), response.text
    for hub, size in ((a, 7), (b, 24)):
        topics = {t["topic"]: t for t in hub.api.get("/topics").json()}
        assert topics["shared-news"]["bytes"] == size, (hub.name, topics)
    # In Redis: each hub's keys under its own id, its topic holding its own data only.
    client = live.sync_client()
    for hub, data in ((a, b"from a\n"), (b, b"from b, which says more\n")):
        monkeypatch.setattr(live, "_hub_id", hub.hub_id())
        entries = client.xrange(live.topic_key("shared-news"))
        assert [f[b"d"] for _, f in entries if b"d" in f] == [data]
        streams = {k.decode().split(":")[3] for k in client.scan_iter(live.stream_key("*", "*"))}
        other = b if hub is a else a
        assert streams, hub.name
        for iid in streams:
            assert hub.api.get(f"/instance/{iid}").status_code == 200
            assert other.api.get(f"/instance/{iid}").status_code == 404


def test_a_worker_ignores_a_message_for_another_hub(two_hubs, monkeypatch):
    """Even signed with the right key for the right list (the hubs share a SECRET_KEY here):
    a start or control message that names another hub does nothing."""
    a, _ = two_hubs
    monkeypatch.setattr(live, "_hub_id", a.hub_id())
    client = live.sync_client()
    dest = live.start_key(a.queue)

    def request(hub: str) -> tuple[str, bytes]:
        token = uuid.uuid4().hex
        header = {
            "hub": hub,
            "id": f"ghost-{uuid.uuid4().hex[:8]}",
            "reply": token,
            "kind": "sequence",
            "sequence": {"id": "x", "sha256": "0" * 64, "main": "main.py", "language": "python"},
            "args": [],
            "appConfig": {},
            "expires": time.time() + 30,
        }
        return token, live.encode_control(dest, header)

    token, foreign = request("some-other-hub")
    client.rpush(dest, foreign)
    wait_for(
        lambda: (
            "ignored a start request" in a.worker.output() and "some-other-hub" in a.worker.output()
        ),
        what="the worker to ignore the start",
    )
    assert client.blpop([live.reply_key(token)], timeout=2) is None  # not acted on
    # The same request for this hub is taken (and refused: it has no row), so only the hub
    # it names made the difference.
    token, own = request(a.hub_id())
    client.rpush(dest, own)
    answer = client.blpop([live.reply_key(token)], timeout=20)
    assert answer is not None
    assert live.decode_reply(token, answer[1])["code"] == "NOT_FOUND"
    # And a control message.
    worker = _worker_name(a)
    ctl = live.control_key(worker)
    client.rpush(ctl, live.encode_control(ctl, {"hub": "some-other-hub", "op": "kill", "id": "x"}))
    wait_for(lambda: "ignored a control message" in a.worker.output(), what="control ignored")


def _worker_name(hub: OneHub) -> str:
    names = [
        k.decode().rsplit(":", 1)[1] for k in live.sync_client().scan_iter(live.worker_key("*"))
    ]
    mine = [n for n in names if f"-{hub.worker.proc.pid}-" in n]
    assert mine, names
    return mine[0]


def test_each_piece_warns_that_another_hub_shares_its_redis(two_hubs):
    a, b = two_hubs
    # B started after A was alive: its worker and web say so at start.
    for handle in (b.worker, b.web):
        wait_for(
            lambda h=handle: (
                "is shared with another hub" in h.output() and a.hub_id() in h.output()
            ),
            what="the warning",
        )
    # And the console's overview tells an admin (anonymous callers are admins here).
    page = httpx.get(b.url + "/", timeout=30).text
    assert 'id="ov-shared-redis"' in page and a.hub_id() in page


# -- the pieces, without hubs ----------------------------------------------------------------


def test_the_registry_names_live_other_hubs_and_a_copied_id(monkeypatch):
    monkeypatch.setattr(live, "_hub_id", "mine")
    now = time.time()
    ours = json.loads(hubs.registry_entry(now)[1])

    def entry(lapses: float, database: str) -> bytes:
        return json.dumps({"lapses": lapses, "host": "h", "database": database}).encode()

    entries = {
        b"mine": entry(now + 30, ours["database"]),  # this hub
        b"gone": entry(now - 1, "x"),  # stopped answering
        b"other": entry(now + 30, "postgresql other at db:5432"),
    }
    assert [h["id"] for h in hubs.other_hubs(entries, now)] == ["other"]
    entries[b"mine"] = entry(now + 30, "postgresql a-copy at db:5432")
    found = {h["id"]: h["same_id"] for h in hubs.other_hubs(entries, now)}
    assert found == {"other": False, "mine": True}


def test_a_hub_id_from_the_environment_must_be_a_plain_name(settings, monkeypatch):
    settings.HUB_ID = "no spaces or: colons"
    with pytest.raises(ImproperlyConfigured, match="HUB_ID"):
        hubs.load_hub_id()
    settings.HUB_ID = "hub-2_b"
    assert hubs.load_hub_id() == "hub-2_b"


@pytest.mark.django_db(transaction=True)
def test_the_id_is_made_once_and_kept_in_the_database(settings):
    from sequences.models import HubIdentity

    settings.HUB_ID = ""
    first = hubs.load_hub_id()
    assert live.HUB_ID_PATTERN.fullmatch(first)
    assert hubs.load_hub_id() == first
    assert list(HubIdentity.objects.values_list("hub_id", flat=True)) == [first]


def test_a_message_for_another_hub_is_refused_by_its_mac_check_too(monkeypatch):
    monkeypatch.setattr(live, "_hub_id", "one")
    raw = live.encode_control("somewhere", {"op": "kill"})
    assert live.decode_control("somewhere", raw)[0]["hub"] == "one"
    monkeypatch.setattr(live, "_hub_id", "two")
    with pytest.raises(live.OtherHub):
        live.decode_control("somewhere", raw)


def test_a_process_on_an_unmigrated_database_stops_and_says_to_run_hub_init(tmp_path):
    env = hub_env(
        HUB_DATA_DIR=str(tmp_path / "data"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        HUB_ID="",
    )
    code = "import django; django.setup(); from sequences import live; live.hub_id()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and "hub_init" in done.stderr, done.stderr


def test_every_key_function_is_in_the_namespace(monkeypatch):
    """A key function added to live.py later goes through `key()` too, and no module writes a
    key name of its own: this catches one that does not."""
    import inspect

    monkeypatch.setattr(live, "_hub_id", "ns-check")
    functions = [
        f
        for name, f in vars(live).items()
        if inspect.isfunction(f) and name.endswith("_key") and f.__module__ == live.__name__
    ]
    assert len(functions) > 15
    for function in functions:
        args = ["x"] * len(inspect.signature(function).parameters)
        assert function(*args).startswith("hub:ns-check:"), function.__name__
    assert live.celery_prefix().startswith("hub:ns-check:")
    assert live.cache_key("k", "", 1).startswith("hub:ns-check:")
    literal = re.compile(r"""f?["']hub:""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("accounts", "core", "dashboard", "runner", "sequences", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "sequences" / "live.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert not offenders, f"Redis key names outside sequences/live.py: {offenders}"
