"""The Workers page: every role sees the cards, only admins see and use the Drain button; a
drain goes to the worker's control list signed, waits for its answer and is audited."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker_row(db, sequence):
    """A worker that beat a moment ago, running one instance, with labels where the model
    has them."""
    from sequences.models import Instance, Worker

    name = f"host-1-{uuid.uuid4().hex[:6]}"
    fields = {}
    if any(f.name == "labels" for f in Worker._meta.get_fields()):
        fields["labels"] = {"zone": "a"}
    worker = Worker.objects.create(
        name=name,
        hostname="host-1",
        pid=4242,
        capacity=10,
        running=1,
        last_seen=timezone.now(),
        sandbox={"summary": "sandbox: Landlock ABI 7"},
        **fields,
    )
    Instance.objects.create(
        sequence=sequence, sequence_name=sequence.name, status="running", worker=name
    )
    yield worker
    from sequences import live

    live.sync_client().delete(live.control_key(name))


def test_every_role_sees_the_cards_only_admins_the_drain_button(clients, worker_row):
    for role in ("viewer", "operator", "admin"):
        response = clients[role].get("/workers/")
        assert response.status_code == 200, role
        html = response.content.decode()
        assert worker_row.name in html and "host-1" in html and "pid 4242" in html
        assert "1 running of 10" in html and "Landlock" in html
        assert 'class="badge s-live"' in html
        has_button = f"/workers/{worker_row.name}/drain/" in html
        assert has_button == (role == "admin"), role
    assert clients["anonymous"].get("/workers/").status_code == 302
    partial = clients["viewer"].get("/workers/?partial=cards", HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    assert partial.content.decode().strip().startswith('<div id="workers-cards">')
    # The nav links to it.
    assert 'href="/workers/"' in clients["viewer"].get("/").content.decode()


def test_silent_and_gone_workers_are_told_apart(clients, worker_row):
    from sequences.models import Worker

    Worker.objects.filter(pk=worker_row.pk).update(last_seen=timezone.now() - timedelta(hours=1))
    html = clients["admin"].get("/workers/").content.decode()
    assert 'class="badge s-silent"' in html
    assert f"/workers/{worker_row.name}/drain/" not in html  # no one would take it
    Worker.objects.filter(pk=worker_row.pk).update(drained=timezone.now(), stopped=timezone.now())
    html = clients["admin"].get("/workers/").content.decode()
    assert 'class="badge s-drained"' in html and "Gone" in html


def test_only_admins_drain(clients, worker_row):
    from accounts.models import AuditEntry
    from sequences import live

    for role in ("viewer", "operator"):
        response = clients[role].post(
            f"/workers/{worker_row.name}/drain/", {"deadline": "5"}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 403, role
    assert live.sync_client().llen(live.control_key(worker_row.name)) == 0
    assert not AuditEntry.objects.filter(action="worker.drain").exists()


def test_refusals_name_the_problem(clients, worker_row):
    from accounts.models import AuditEntry

    response = clients["admin"].post(
        "/workers/nobody/drain/", {"deadline": "5"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 404
    assert "nobody" in response.content.decode()
    for bad in ("soon", "-3", "nan"):
        response = clients["admin"].post(
            f"/workers/{worker_row.name}/drain/", {"deadline": bad}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 400, bad
        assert "deadline" in response.content.decode()
    refused = AuditEntry.objects.filter(action="worker.drain", outcome="refused")
    assert refused.count() == 4


def _answer_as_the_worker(name: str, seen: list[dict]) -> threading.Thread:
    """Stand in for the worker's control loop: pop the drain, check its MAC, answer it."""
    from sequences import live

    def run() -> None:
        client = live.sync_client()
        item = client.blpop([live.control_key(name)], timeout=10)
        if item is None:
            return
        header, _ = live.decode_control(live.control_key(name), item[1])
        seen.append(header)
        answer = {
            "ok": True,
            "worker": name,
            "running": 1,
            "deadline": time.time() + header["deadline"],
        }
        client.rpush(live.reply_key(header["reply"]), live.encode_reply(header["reply"], answer))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_admin_drains_a_worker(clients, worker_row):
    from accounts.models import AuditEntry
    from sequences.models import Worker

    seen: list[dict] = []
    thread = _answer_as_the_worker(worker_row.name, seen)
    response = clients["admin"].post(
        f"/workers/{worker_row.name}/drain/", {"deadline": "42"}, HTTP_HX_REQUEST="true"
    )
    thread.join(10)
    assert response.status_code == 200, response.content
    assert "Draining" in response.content.decode()
    assert seen and seen[0]["op"] == "drain" and seen[0]["deadline"] == 42
    row = Worker.objects.get(pk=worker_row.pk)
    assert row.draining is not None and row.drain_deadline is not None
    assert AuditEntry.objects.filter(
        action="worker.drain", target=worker_row.name, outcome="ok"
    ).exists()
    html = clients["viewer"].get("/workers/").content.decode()
    assert 'class="badge s-draining"' in html and "is stopped at" in html


async def test_the_workers_socket_sends_the_cards_and_refuses_strangers(users, worker_row):
    """The page's socket: a snapshot of the cards, again when an instance changes."""
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer
    from django.test import Client

    from sequences import notices
    from tests.dashboard.test_consumers import communicator, receive_until

    def cookie(user) -> str:
        client = Client()
        client.force_login(user)
        return f"sessionid={client.cookies['sessionid'].value}"

    strangers = communicator("/ws/workers/", "")
    connected, code = await strangers.connect()
    assert not connected and code == 4003
    comm = communicator("/ws/workers/", await sync_to_async(cookie)(users["viewer"]))
    connected, _ = await comm.connect()
    assert connected
    snapshot = await receive_until(comm, 'id="workers-cards"')
    assert worker_row.name in snapshot and "/drain/" not in snapshot
    await get_channel_layer().group_send(
        notices.INSTANCES, {"type": notices.INSTANCE_CHANGED, "id": "x"}
    )
    # Sooner than the 5 s look: the notice, not the poll.
    again = await receive_until(comm, 'id="workers-cards"', timeout=3)
    assert worker_row.name in again
    await comm.disconnect()
