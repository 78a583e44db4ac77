"""Readable logs and live pages (issue 17, items 2 and 5), server side: the `log` stream as
rows, the per-line arrival time, the tab that opens first, and the notices that keep the Events
card and the sequencer list live. The browser side is in tests/e2e/test_live_pages.py."""

from __future__ import annotations

import datetime
import json
import re
import threading

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from dashboard import logs
from dashboard.views.instances import first_with_lines
from sequences import live
from tests.conftest import wait_for
from tests.dashboard.test_consumers import communicator, cookies, receive_until  # noqa: F401
from tests.live_writes import awrite

pytestmark = pytest.mark.django_db(transaction=True)

AT = datetime.datetime(2026, 12, 3, 21, 4, 5, 678000, tzinfo=datetime.UTC)


def entry(**fields) -> bytes:
    return json.dumps({"ts": int(AT.timestamp() * 1000), **fields}).encode()


def test_a_log_line_becomes_a_row_of_time_level_logger_and_message():
    raw = entry(level="WARNING", msg="disk <almost> full", **{"from": "Runner"}, data={"free": 3})
    (line,) = logs.render_lines([((0, 0), raw)], stream="log")
    assert line.level == "warn"
    assert line.time == logs.clock(AT) and line.time.endswith(":05.678")
    assert '<span class="lv">WARNING</span>' in line.html
    assert '<span class="lg">Runner</span>' in line.html
    assert "disk &lt;almost&gt; full" in line.html  # escaped, never markup
    assert '<span class="ld">{&quot;free&quot;: 3}</span>' in line.html


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("DEBUG", "debug"),
        ("trace", "debug"),
        ("INFO", "info"),
        ("WARN", "warn"),
        ("ERROR", "error"),
        ("FATAL", "error"),
        ("CRITICAL", "error"),
        ("NOTICE", "info"),
    ],
)
def test_every_runtime_level_maps_to_one_the_filter_knows(level, shown):
    (line,) = logs.render_lines([((0, 0), entry(level=level, msg="m"))], stream="log")
    assert line.level == shown


def test_a_traceback_shows_under_its_row_and_a_bad_line_stays_plain():
    raw = entry(level="ERROR", msg="boom", exc="Traceback ...\nValueError: x")
    plain = b"not json at all <b>"
    huge_ts = json.dumps({"ts": 10**30, "level": "INFO", "msg": "far future"}).encode()
    rows = logs.render_lines([((0, 0), raw), ((0, 9), plain), ((0, 30), huge_ts)], stream="log")
    assert '<span class="lx">Traceback ...\nValueError: x</span>' in rows[0].html
    assert rows[1].level == "" and rows[1].html == "not json at all &lt;b&gt;"
    assert rows[2].level == "info" and rows[2].time == ""  # no time rather than a failed page
    # Other streams are never parsed, whatever their lines look like.
    (line,) = logs.render_lines([((0, 0), raw)], stream="stdout")
    assert line.level == "" and line.html.startswith("{&quot;ts&quot;")


def test_stdout_lines_carry_the_arrival_time_of_the_chunk_they_start_in(ended_instance):
    from sequences.models import StreamChunk

    StreamChunk.objects.filter(instance=ended_instance).update(created=AT)
    StreamChunk.objects.filter(instance=ended_instance, seq=1).update(
        created=AT + datetime.timedelta(seconds=2)
    )
    window = logs.tail(ended_instance.id, "stdout")
    lines = logs.render_lines(window.lines, window.times, "stdout")
    assert [(line.at, line.time) for line in lines] == [
        ("0:0", logs.clock(AT)),
        ("0:7", logs.clock(AT)),  # "line 2" starts in chunk 0, ends in chunk 1
        ("1:2", logs.clock(AT + datetime.timedelta(seconds=2))),
        ("1:20", logs.clock(AT + datetime.timedelta(seconds=2))),
    ]
    earlier = logs.earlier(ended_instance.id, "stdout", (1, 2))
    assert [line.time for line in logs.render_lines(earlier.lines, earlier.times)] == [
        logs.clock(AT)
    ] * 2
    # Chunks stored before the hub recorded times have none: no gutter text.
    StreamChunk.objects.filter(instance=ended_instance).update(created=None)
    window = logs.tail(ended_instance.id, "stdout")
    assert {line.time for line in logs.render_lines(window.lines, window.times)} == {""}


def test_the_page_draws_log_rows_the_filter_and_opens_the_tab_with_lines(clients, sequence):
    from sequences.models import Instance, StreamChunk

    instance = Instance.objects.create(sequence=sequence, status="completed", exit_code=0)
    data = entry(level="INFO", msg="hello") + b"\n" + entry(level="ERROR", msg="bad") + b"\n"
    StreamChunk.objects.create(instance=instance, stream="log", seq=0, data=data, created=AT)
    html = clients["viewer"].get(f"/instances/{instance.id}/").content.decode()
    assert re.search(r'<a href="#pane-log" role="tab" data-tab="log" class="on">', html)
    assert re.search(r'class="pane on" id="pane-log"', html)
    assert 'class="pane " id="pane-stdout"' in html
    assert "data-level-filter" in html and "data-times" in html
    assert re.search(
        r'<div class="l lv-error" data-at="0:\d+" data-t="[\d:.]+"><span class="lv">', html
    )
    panes = [{"name": "stdout", "lines": [], "partial": None}, {"name": "log", "lines": [1]}]
    assert first_with_lines(panes) == "log"
    assert first_with_lines([{"name": "stdout", "lines": [], "partial": None}]) == "stdout"


def test_the_database_writer_keeps_when_each_chunk_arrived(ended_instance):
    from runner.dbwriter import DbWriter
    from sequences.models import StreamChunk

    writer = DbWriter()
    before = timezone.now()
    writer.chunk(ended_instance.id, "stderr", 0, b"oops\n")
    writer.flush()
    row = StreamChunk.objects.get(instance=ended_instance, stream="stderr", seq=0)
    assert row.created is not None and before <= row.created <= timezone.now()


def test_the_writer_batches_chunks_but_writes_a_status_change_at_once(ended_instance, monkeypatch):
    """Chunks wait out the writer's gap between transactions; a status change (a start's
    worker and pid, which a stop right after the start is routed by) does not."""
    import time

    from runner import dbwriter
    from sequences.models import Instance, StreamChunk

    monkeypatch.setattr(dbwriter, "WRITE_GAP_S", 3.0)
    writer = dbwriter.DbWriter()
    writer.flush()  # a transaction just now: the next waits out the gap
    queued = time.monotonic()
    writer.chunk(ended_instance.id, "stderr", 0, b"later\n")
    time.sleep(0.5)
    assert not StreamChunk.objects.filter(instance=ended_instance, stream="stderr").exists()
    writer.update(ended_instance.id, status="running", worker="w-now", pid=4242)
    wait_for(
        lambda: Instance.objects.get(pk=ended_instance.id).worker == "w-now",
        timeout=2,
        what="the status change written",
    )
    assert time.monotonic() - queued < 2.5
    # The chunk queued before it went in the same transaction: the order holds.
    assert StreamChunk.objects.filter(instance=ended_instance, stream="stderr").exists()


def test_chunks_saved_from_a_dead_workers_stream_keep_redis_times(live_instance):
    from runner.tasks import entry_time, keep_live_tail
    from sequences.models import StreamChunk

    key = live.stream_key(live_instance.id, "stderr")
    client = live.sync_client()
    millis = int(AT.timestamp() * 1000)
    client.xadd(key, {"s": 0, "d": b"last words\n"}, id=f"{millis}-0")
    assert keep_live_tail([live_instance.id]) == 1
    row = StreamChunk.objects.get(instance=live_instance, stream="stderr", seq=0)
    assert row.created == AT.replace(microsecond=678000)
    assert entry_time(b"nonsense") is None


@pytest.fixture
def live_instance(ended_instance):
    ended_instance.status = "running"
    ended_instance.exit_code = None
    ended_instance.ended = None
    ended_instance.worker = "w-live-logs"
    ended_instance.save()
    yield ended_instance
    live.sync_client().delete(
        *live.instance_keys(ended_instance.id), live.control_key("w-live-logs")
    )


async def test_a_sent_event_reaches_the_open_page_without_reload(cookies, live_instance):  # noqa: F811
    from sequences import instances

    comm = communicator(f"/ws/instances/{live_instance.id}/", cookies["viewer"])
    assert (await comm.connect())[0]
    snapshot = await receive_until(comm, 'id="inst-events"')
    assert "No events yet." in snapshot
    await instances.send_event(live_instance, "calibrate", {"offset": 7})
    update = await receive_until(comm, "calibrate")
    assert "sent in" in update and "offset" in update
    await comm.disconnect()


async def test_live_lines_carry_the_time_they_arrived(cookies, live_instance):  # noqa: F811
    comm = communicator(f"/ws/instances/{live_instance.id}/?logs=1", cookies["viewer"])
    assert (await comm.connect())[0]
    await receive_until(comm, "last")
    key = live.stream_key(live_instance.id, "stdout")
    await awrite([(key, {"s": 3, "d": b"!\nfresh\n"})])
    pushed = await receive_until(comm, "fresh")
    assert re.search(r'data-at="3:2" data-t="\d\d:\d\d:\d\d\.\d{3}">fresh</div>', pushed)
    await comm.disconnect()


async def test_a_sequencer_made_by_load_script_appears_on_an_open_list(cookies, sequence):  # noqa: F811
    from sequences import sequencers
    from sequences.models import SequenceComponent, Sequencer

    listing = communicator("/ws/sequencers/", cookies["viewer"])
    assert (await listing.connect())[0]
    first = await listing.receive_from(timeout=10)
    assert "ESW.fresh" not in first
    comp = await sync_to_async(SequenceComponent.objects.create)(name="ESW.livelist")
    row = await sync_to_async(Sequencer.objects.create)(prefix="ESW.fresh", script=sequence)
    done = threading.Event()

    def attach() -> None:
        sequencers._attach(row.id, comp, None)
        done.set()

    await sync_to_async(attach)()
    assert done.is_set()
    assert "ESW.fresh" in await receive_until(listing, "ESW.fresh")
    await listing.disconnect()


def test_overview_counts_agree_with_the_list_rows(clients, live_instance):
    from sequences.models import Sequencer

    # A sequencer whose worker is gone: the list shows it Killed, so the overview counts it so.
    Sequencer.objects.create(prefix="ESW.orphan", instance=live_instance, state="Running")
    html = clients["viewer"].get("/").content.decode()
    assert re.search(r"<b>0</b><span>sequencers</span>", html)
    assert re.search(r">Killed</span> <b>1</b>", html)  # counted once, as the list shows it
    assert 'href="/instances/?status=live"><b>1</b><span>live</span>' in html
    listing = clients["viewer"].get("/instances/?status=live").content.decode()
    assert live_instance.id in listing


def test_the_writers_update_stores_what_the_orms_would(ended_instance):
    """The writer's UPDATE is written without the ORM's query building (runner/dbwriter.py:
    update_instance); every kind of value it is given is stored as update() stores it."""
    from runner.dbwriter import update_instance
    from sequences.models import Instance, InstanceStatus

    at = timezone.now().replace(microsecond=123456)
    fields = {
        "status": InstanceStatus.ERRORED,
        "exit_code": 137,
        "reason": "Killed by 'x' \"y\"; --",
        "ended": at,
        "remove_at": at + datetime.timedelta(days=1),
        "worker": "w-ünïcode",
        "pid": None,
    }
    assert update_instance(ended_instance.id, fields) == 1
    ours = Instance.objects.values(*fields).get(pk=ended_instance.id)
    Instance.objects.filter(pk=ended_instance.id).update(status="running", pid=1, ended=None)
    Instance.objects.filter(pk=ended_instance.id).update(**fields)
    assert Instance.objects.values(*fields).get(pk=ended_instance.id) == ours
    assert ours["ended"] == at and ours["pid"] is None
    assert update_instance("no-such-instance", {"pid": 1}) == 0
    with pytest.raises(Exception, match=r"no_such_field"):
        update_instance(ended_instance.id, {"no_such_field": 1})
