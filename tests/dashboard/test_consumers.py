"""Console WebSockets through the real ASGI application and the real Redis channel layer."""

from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from dashboard.asgi import application
from sequences import live, notices
from tests.live_writes import awrite

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cookies(users) -> dict[str, str]:
    """A session cookie header per role (anonymous: none)."""
    result = {"anonymous": ""}
    for role, user in users.items():
        client = Client()
        client.force_login(user)
        result[role] = f"sessionid={client.cookies['sessionid'].value}"
    return result


def communicator(path: str, cookie: str) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_until(comm: WebsocketCommunicator, needle: str, timeout: float = 10) -> str:
    """Messages until one contains `needle`; all of them joined."""
    seen = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no message with {needle!r} in: {''.join(seen)[-2000:]}")
        message = await comm.receive_from(timeout=left)
        seen.append(message)
        if needle in message:
            return "".join(seen)


@pytest.fixture
def live_instance(ended_instance):
    """The stored instance, now running on a (pretend) worker."""
    ended_instance.status = "running"
    ended_instance.exit_code = None
    ended_instance.ended = None
    ended_instance.save()
    yield ended_instance
    live.sync_client().delete(*live.instance_keys(ended_instance.id))


async def test_anonymous_sockets_are_refused(cookies, ended_instance):
    for path in ["/ws/overview/", f"/ws/instances/{ended_instance.id}/", "/ws/sequencers/"]:
        comm = communicator(path, cookies["anonymous"])
        connected, code = await comm.connect()
        assert not connected and code == 4003, path


async def test_unknown_objects_are_refused(cookies):
    comm = communicator("/ws/instances/no-such-instance/", cookies["viewer"])
    connected, code = await comm.connect()
    assert not connected and code == 4004


async def test_the_instance_socket_sends_a_snapshot_then_updates(cookies, live_instance):
    comm = communicator(f"/ws/instances/{live_instance.id}/", cookies["viewer"])
    connected, _ = await comm.connect()
    assert connected
    snapshot = await receive_until(comm, 'id="log-stdout-lines"')
    assert 'id="inst-status"' in snapshot and "running" in snapshot
    assert '<span class="ansi31">red line</span>' in snapshot
    # A viewer's snapshot has no stop button; the partial line "last" comes with the first flush.
    assert "Kill</button>" not in snapshot
    await receive_until(comm, "last")
    await get_channel_layer().group_send(
        notices.instance_group(live_instance.id),
        {"type": notices.INSTANCE_CHANGED, "id": live_instance.id, "status": "stopping"},
    )
    update = await receive_until(comm, 'data-status="stopping"')
    assert 'id="inst-status"' in update
    await comm.disconnect()


async def test_new_lines_are_followed_and_the_end_is_shown(cookies, live_instance):
    iid = live_instance.id
    comm = communicator(f"/ws/instances/{iid}/", cookies["operator"])
    assert (await comm.connect())[0]
    snapshot = await receive_until(comm, 'id="log-stdout-lines"')
    assert "Kill</button>" in snapshot  # operators get the controls
    key = live.stream_key(iid, "stdout")
    await awrite([(key, {"s": 3, "d": b" line\nfresh \x1b[32mgreen\x1b[0m\n"})])
    pushed = await receive_until(comm, "green")
    assert 'hx-swap-oob="beforeend:#log-stdout-lines"' in pushed
    # The partial line completed (with the time its first chunk arrived, for the gutter).
    assert re.search(r'data-at="2:16"( data-t="[\d:.]+")?>last line</div>', pushed)
    await awrite([(key, {"s": 4, "d": b"the very last words"})])
    await sync_to_async(_end)(iid)
    ends = [live.stream_key(iid, stream) for stream in live.STREAMS]
    await awrite([(key, live.sign_end(key, {"eof": 1})) for key in ends])
    final = await receive_until(comm, 'data-status="completed"')
    # The unfinished last line is flushed as a line before the final status.
    assert re.search(
        r'beforeend:#log-stdout-lines"><div class="l"[^>]*>the very last words',
        final,
    )
    await comm.disconnect()


def _end(iid: str) -> None:
    from sequences.models import Instance, StreamChunk

    StreamChunk.objects.create(instance_id=iid, stream="stdout", seq=3, data=b"x")
    StreamChunk.objects.create(instance_id=iid, stream="stdout", seq=4, data=b"y")
    Instance.objects.filter(pk=iid).update(status="completed", exit_code=0)


async def test_a_flood_of_lines_is_coalesced(cookies, live_instance):
    """100 000 lines at once reach the browser as a few bounded messages."""
    from dashboard.consumers import MAX_LINES_PER_FLUSH

    iid = live_instance.id
    comm = communicator(f"/ws/instances/{iid}/?logs=1", cookies["viewer"])
    assert (await comm.connect())[0]
    await receive_until(comm, 'id="log-stdout-lines"')
    await receive_until(comm, "last")
    flood = []
    lines = 0
    for seq in range(3, 103):
        data = b"".join(b"flood line %d\n" % (lines + i) for i in range(1000))
        flood.append((live.stream_key(iid, "stdout"), {"s": seq, "d": data}))
        lines += 1000
    await awrite(flood)
    messages = []
    while True:
        message = await comm.receive_from(timeout=10)
        messages.append(message)
        if "flood line 99999" in message:
            break
    assert len(messages) < 60
    for message in messages:
        assert message.count('<div class="l" data-at') <= MAX_LINES_PER_FLUSH + 1
    assert any("lines not shown live" in m for m in messages)
    await comm.disconnect()


async def test_list_pages_refresh_when_something_changes(cookies, live_instance):
    comm = communicator("/ws/instances/?status=running", cookies["viewer"])
    assert (await comm.connect())[0]
    first = await comm.receive_from(timeout=10)
    assert 'id="rows-table"' in first and live_instance.id in first
    await sync_to_async(_end)(live_instance.id)
    await get_channel_layer().group_send(
        notices.INSTANCES,
        {"type": notices.INSTANCE_CHANGED, "id": live_instance.id, "status": "completed"},
    )
    again = await comm.receive_from(timeout=10)
    assert live_instance.id not in again  # no longer running: filtered out
    await comm.disconnect()


async def test_the_overview_socket_sends_its_regions(cookies, live_instance):
    comm = communicator("/ws/overview/", cookies["viewer"])
    assert (await comm.connect())[0]
    snapshot = await comm.receive_from(timeout=10)
    for region in (
        "ov-counts",
        "ov-running",
        "ov-ended",
        "ov-sequencers",
        "ov-workers",
        "ov-recent",
    ):
        assert f'id="{region}"' in snapshot
    assert live_instance.id[:10] in snapshot
    await comm.disconnect()


async def test_the_sequencer_socket_follows_its_changes(cookies, sequence):
    from sequences.models import Sequencer, Step

    row = await sync_to_async(Sequencer.objects.create)(
        prefix="ESW.sock", script=sequence, state="Killed", has_step_list=True
    )
    await sync_to_async(Step.objects.create)(
        sequencer=row, position=0, step_id="a", type="Setup", command="move", status="Pending"
    )
    comm = communicator(f"/ws/sequencers/{row.id}/", cookies["operator"])
    assert (await comm.connect())[0]
    snapshot = await comm.receive_from(timeout=10)
    assert 'id="sq-state"' in snapshot and 'id="sq-steps"' in snapshot
    assert re.search(r'data-command="shutdown"[^>]*disabled', snapshot)
    await sync_to_async(Step.objects.filter(sequencer=row).update)(status="InFlight")
    await get_channel_layer().group_send(
        notices.sequencer_group(row.id),
        {"type": notices.SEQUENCER_CHANGED, "id": row.id, "snapshot": {}},
    )
    update = await comm.receive_from(timeout=10)
    assert 'class="st-inflight' in update
    await comm.disconnect()
    listing = communicator("/ws/sequencers/", cookies["viewer"])
    assert (await listing.connect())[0]
    assert "ESW.sock" in await listing.receive_from(timeout=10)
    await listing.disconnect()
    components = communicator("/ws/components/", cookies["viewer"])
    assert (await components.connect())[0]
    assert 'id="components-table"' in await components.receive_from(timeout=10)
    await components.disconnect()


async def test_an_emitted_event_reaches_an_open_instance_page(hub, people, cookies):
    """A real instance on the hub's worker emits an event; the page's socket shows it."""
    import httpx

    from tests.packaging import python_package

    code = """
import asyncio
async def run(context, input):
    await asyncio.sleep(1.5)
    context.emit("calibrated", {"offset": 42})
    await asyncio.sleep(30)
"""
    async with httpx.AsyncClient(
        base_url=hub.api, headers=people["admin"].headers(), timeout=60
    ) as api:
        seq = (await api.post("/sequence", content=python_package(code))).json()["id"]
        iid = (await api.post(f"/sequence/{seq}/start", json={})).json()["id"]
        comm = communicator(f"/ws/instances/{iid}/", cookies["viewer"])
        assert (await comm.connect())[0]
        seen = await receive_until(comm, "calibrated", timeout=15)
        assert "42" in seen.split("calibrated", 1)[1]
        await comm.disconnect()
        await api.post(f"/instance/{iid}/_kill", json={})


async def closed_with(comm: WebsocketCommunicator, timeout: float = 10) -> int:
    """The close code the server sends, reading past the messages before it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "the socket stayed open"
        output = await comm.receive_output(timeout=left)
        if output["type"] == "websocket.close":
            return output["code"]


@pytest.fixture
def quick_access_checks(monkeypatch):
    from dashboard import consumers

    monkeypatch.setattr(consumers, "ACCESS_POLL_SECONDS", 0.1)


async def test_an_open_page_closes_once_its_user_is_deactivated(
    cookies, users, ended_instance, quick_access_checks
):
    comm = communicator(f"/ws/instances/{ended_instance.id}/", cookies["viewer"])
    assert (await comm.connect())[0]
    await receive_until(comm, 'id="log-stdout-lines"')
    user = users["viewer"]
    user.is_active = False
    await sync_to_async(user.save)()
    assert await closed_with(comm) == 4003


async def test_an_open_page_closes_once_its_session_logs_out(
    users, ended_instance, quick_access_checks
):
    client = Client()
    await sync_to_async(client.force_login)(users["operator"])
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    comm = communicator("/ws/overview/", cookie)
    assert (await comm.connect())[0]
    await comm.receive_from(timeout=10)
    await sync_to_async(client.logout)()
    assert await closed_with(comm) == 4003


async def test_a_page_whose_user_loses_a_role_redraws_without_its_buttons(
    cookies, users, live_instance, quick_access_checks
):
    from django.contrib.auth.models import Group

    comm = communicator(f"/ws/instances/{live_instance.id}/", cookies["operator"])
    assert (await comm.connect())[0]
    assert "Kill</button>" in await receive_until(comm, 'id="log-stdout-lines"')
    operator = await sync_to_async(Group.objects.get)(name="operator")
    await sync_to_async(users["operator"].groups.remove)(operator)
    redrawn = await receive_until(comm, 'id="inst-status"')
    assert "Kill</button>" not in redrawn.rsplit('id="inst-status"', 1)[1]
    await comm.disconnect()


# -- topics ----------------------------------------------------------------------------------


@pytest.fixture
async def topic_name():
    import uuid

    from sequences import topics

    name = f"t-{uuid.uuid4().hex[:8]}"
    await topics.ensure(name, "text/plain")
    yield name
    if await topics.get(name) is not None:
        await topics.delete(name)


async def test_the_topics_socket_sends_rates_between_two_looks(cookies, topic_name, monkeypatch):
    from dashboard import consumers
    from sequences import topics

    monkeypatch.setattr(consumers, "TOPIC_POLL_SECONDS", 0.3)
    assert not (await communicator("/ws/topics/", cookies["anonymous"]).connect())[0]
    comm = communicator("/ws/topics/", cookies["viewer"])
    assert (await comm.connect())[0]
    first = await receive_until(comm, 'id="topics-pipeline"')
    assert f'data-topic="{topic_name}"' in first and "chunks/s" not in first
    await topics.publish(topic_name, [b"a\n"] * 10)
    later = await receive_until(comm, "chunks/s")
    assert f'data-topic="{topic_name}"' in later
    await comm.disconnect()


async def test_the_tail_socket_follows_escaped_and_ends_on_delete(cookies, topic_name):
    from sequences import topics

    await topics.publish(topic_name, [b"old line\n"])
    assert not (await communicator("/ws/topics/no-such/", cookies["viewer"]).connect())[0]
    comm = communicator(f"/ws/topics/{topic_name}/", cookies["viewer"])
    assert (await comm.connect())[0]
    assert "old line" in await receive_until(comm, 'id="log-topic-lines"')
    await topics.publish(topic_name, [b"<script>x()</script> \x1b[32mgreen\x1b[0m\n"])
    html = await receive_until(comm, "green")
    assert "&lt;script&gt;x()&lt;/script&gt;" in html and "<script>" not in html
    assert '<span class="ansi32">green</span>' in html and "old line" not in html
    await topics.delete(topic_name)
    assert "deleted" in await receive_until(comm, 'id="topic-ended"', timeout=15)
    await comm.disconnect()


async def test_the_instance_socket_redraws_its_charts_when_a_sample_comes(
    cookies, live_instance, settings
):
    from django.utils import timezone

    from sequences import resources

    settings.HUB_SAMPLE_SECONDS = 0.2  # the socket looks every second at the most often
    comm = communicator(f"/ws/instances/{live_instance.id}/", cookies["viewer"])
    assert (await comm.connect())[0]
    snapshot = await receive_until(comm, 'id="inst-resources"')
    assert 'data-samples="0"' in snapshot and "no samples" in snapshot
    # What a worker writes (runner/sampler.py): the page redraws with it, unasked.
    sample = resources.Sample(timezone.now().timestamp(), 37.5, 5 << 20)
    await sync_to_async(live.sync_client().rpush)(
        resources.resources_key(live_instance.id), resources.encode(sample)
    )
    redrawn = await receive_until(comm, 'data-samples="1"')
    assert "CPU: now 37.5 %" in redrawn and "Memory: now 5.0 MiB" in redrawn
    await comm.disconnect()


async def test_the_overview_socket_sends_the_trends(cookies, live_instance):
    from dashboard.views import overview

    overview.forget_trends()  # this process's last trends may be an earlier test's
    comm = communicator("/ws/overview/", cookies["viewer"])
    assert (await comm.connect())[0]
    snapshot = await comm.receive_from(timeout=10)
    assert 'id="ov-trends"' in snapshot and '<svg class="chart bars"' in snapshot
    assert 'class="end-running"' in snapshot  # the running instance, in the current hour
    await comm.disconnect()
