"""Trends and resource charts: the database's aggregation, the SVG drawn from it, the pages."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from html import unescape

import pytest
from django.utils import timezone

from dashboard import charts
from dashboard.views import overview
from runner import sampler
from sequences import live, resources, trends
from sequences.models import Instance, InstanceStatus
from sequences.resources import RING, Sample
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_trends():
    overview.forget_trends()
    yield
    overview.forget_trends()


def make_run(
    name: str,
    status: str,
    exit_code: int | None,
    created_ago: timedelta,
    ran: float | None = None,
) -> Instance:
    """An instance created `created_ago`, that ran `ran` seconds (None: never started)."""
    instance = Instance.objects.create(sequence_name=name, status=status, exit_code=exit_code)
    created = timezone.now() - created_ago
    started = created + timedelta(seconds=1) if ran is not None else None
    ended = started + timedelta(seconds=ran) if started is not None and ran is not None else None
    if status in (InstanceStatus.RUNNING,):
        ended = None
    # `created` is auto_now_add: set it afterwards, as a run made earlier would have it.
    Instance.objects.filter(pk=instance.pk).update(created=created, started=started, ended=ended)
    return instance


# -- the aggregation ---------------------------------------------------------------------------


def test_runs_per_hour_are_grouped_by_how_they_ended():
    hour = timedelta(hours=1)
    make_run("a", "completed", 0, timedelta(minutes=1), 1)
    make_run("a", "completed", 137, timedelta(minutes=2), 1)  # killed
    make_run("a", "completed", 138, timedelta(minutes=3), 1)  # stopped
    make_run("a", "errored", 23, timedelta(minutes=4), 1)
    make_run("a", "lost", None, 3 * hour, 1)
    make_run("a", "running", None, 3 * hour, 1)
    make_run("a", "completed", 0, 30 * hour, 1)  # outside the window: not counted

    data = trends.trends()

    assert len(data.hours) == trends.WINDOW_HOURS
    this_hour = timezone.localtime().replace(minute=0, second=0, microsecond=0)
    assert data.hours[-1].start == this_hour  # the current hour last
    assert data.totals == {
        "completed": 1,
        "killed": 1,
        "stopped": 1,
        "failed": 1,
        "lost": 1,
        "running": 1,
    }
    assert sum(b.total for b in data.hours) == 6
    three_hours_ago = [b for b in data.hours if b.counts.get("lost")]
    assert len(three_hours_ago) == 1 and three_hours_ago[0].counts == {"lost": 1, "running": 1}
    # Failed and lost over the five runs that ended.
    assert data.ended == 5 and data.failed == 2
    assert data.failure_rate == pytest.approx(0.4)


def test_durations_per_sequence_are_the_databases_percentiles():
    for seconds in range(1, 11):  # 1 .. 10 s
        make_run("ten", "completed", 0, timedelta(minutes=seconds), seconds)
    make_run("ten", "errored", 23, timedelta(minutes=20), 100)
    make_run("one", "completed", 0, timedelta(minutes=5), 2.5)
    make_run("one", "running", None, timedelta(minutes=5), 2.5)  # not ended: not counted
    make_run("never", "errored", 20, timedelta(minutes=5))  # never started: not counted

    rows = {d.name: d for d in trends.durations_per_sequence(timezone.now() - timedelta(hours=1))}

    assert set(rows) == {"ten", "one"}
    ten = rows["ten"]
    values = [*range(1, 11), 100]
    assert ten.runs == 11 and ten.failed == 1
    assert ten.p50 == pytest.approx(trends._quantile(values, 0.5))  # 6 s
    assert ten.p95 == pytest.approx(trends._quantile(values, 0.95))  # 55 s
    assert ten.p50 == pytest.approx(6.0)
    assert rows["one"].runs == 1 and rows["one"].p50 == pytest.approx(2.5)
    # The busiest sequence first.
    busiest = trends.durations_per_sequence(timezone.now() - timedelta(hours=1), top=1)
    assert [d.name for d in busiest] == ["ten"]


def test_no_runs_at_all_gives_empty_trends():
    data = trends.trends()
    assert data.totals == {} and data.durations == []
    assert data.failure_rate is None
    assert all(b.total == 0 for b in data.hours)


def test_ending_is_decided_in_one_expression():
    make_run("x", "completed", 137, timedelta(minutes=1), 1)
    ending = Instance.objects.annotate(e=trends.ending_expression()).values_list("e", flat=True)
    assert list(ending) == ["killed"]


def test_trends_count_each_run_as_its_badge_shows_it():
    from tests.sequences.test_outcomes import CASES

    for status, code, reason, _, _ in CASES:
        Instance.objects.create(sequence_name="x", status=status, exit_code=code, reason=reason)
    Instance.objects.create(sequence_name="x", status=InstanceStatus.RUNNING)
    rows = Instance.objects.annotate(e=trends.ending_expression())
    for row in rows:
        assert row.e == (row.outcome or trends.UNENDED), (row.status, row.exit_code, row.reason)
    # A stop that overran its timeout is a stop, a drain deadline a kill, a refusal its own.
    totals = trends.trends().totals
    want: dict[str, int] = {}
    for row in rows:
        want[row.outcome or trends.UNENDED] = want.get(row.outcome or trends.UNENDED, 0) + 1
    assert totals == want
    assert {"stopped", "killed", "refused", "lost", "failed", "completed"} <= set(totals)
    assert set(totals) <= {name for name, _ in trends.ENDINGS}


def test_quantile_interpolates_like_percentile_cont():
    assert trends._quantile([], 0.5) == 0.0
    assert trends._quantile([4.0], 0.95) == 4.0
    assert trends._quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


# -- the SVG -----------------------------------------------------------------------------------


def test_stacked_bars_show_each_count_with_its_ending():
    start = timezone.now().replace(minute=0, second=0, microsecond=0)
    buckets = [
        trends.Bucket(start - timedelta(hours=1), {"completed": 3, "failed": 2}),
        trends.Bucket(start, {"killed": 1}),
    ]
    svg = str(charts.stacked_bars(buckets, trends.ENDINGS, "Runs"))
    assert svg.startswith("<svg") and "style=" not in svg  # the CSP allows no inline style
    assert 'aria-label="Runs: 6 runs"' in svg
    rects = re.findall(r'<rect class="end-(\w+)"[^>]*data-count="(\d+)"', svg)
    assert rects == [("completed", "3"), ("failed", "2"), ("killed", "1")]
    assert f"{timezone.localtime(start):%H}:00 · 1 killed" in svg
    assert "no runs" not in svg


def test_stacked_bars_of_nothing_say_so():
    start = timezone.now().replace(minute=0, second=0, microsecond=0)
    svg = str(charts.stacked_bars([trends.Bucket(start)], trends.ENDINGS, "Runs"))
    assert "no runs" in svg and '<rect class="end-' not in svg
    assert str(charts.stacked_bars([], trends.ENDINGS, "Runs")).count("no runs") == 1


def test_sparkline_shows_the_last_and_the_peak():
    now = 1_700_000_000.0
    samples = [
        Sample(now, 5.0, 10 << 20),
        Sample(now + 5, 42.5, 30 << 20),
        Sample(now + 10, 12.0, 20 << 20),
    ]
    cpu = charts.sparkline(samples, "cpu", "cpu", "percent")
    assert "CPU: now 12.0 %, peak 42.5 %, 3 samples" in cpu.svg
    assert re.search(
        r'<polyline class="chart-line" points="0,[\d.]+ 150,[\d.]+ 300,[\d.]+"', cpu.svg
    )
    # The scale's top is a round 50 %, at y 2; 0 % is at y 59: 42.5 % is 85 % of the way up.
    assert '<polyline class="chart-line" points="0,53.3 150,10.6 300,45.3"/>' in cpu.svg
    assert (
        ">12.0 %<" in cpu.caption and "peak 42.5 %" in cpu.caption and "0 to 50.0 %" in cpu.caption
    )
    rss = charts.sparkline(samples, "rss", "rss", "bytes")
    assert "Memory: now 20.0 MiB, peak 30.0 MiB" in rss.svg
    assert "<text" not in cpu.svg + rss.svg  # a stretched drawing carries no text
    assert "style=" not in cpu.svg + rss.svg


def test_sparkline_of_one_sample_and_of_none():
    one = charts.sparkline([Sample(1_700_000_000.0, 3.0, 2048)], "rss", "rss", "bytes")
    assert "now 2.0 KiB" in one.svg and "1 sample up" in one.svg and 'points="0,' in one.svg
    empty = charts.sparkline([], "cpu")
    assert "no samples" in empty.caption and "no samples" in empty.svg
    assert "<polyline" not in empty.svg and 'class="chart spark cpu empty"' in empty.svg


def test_chart_text_is_escaped():
    svg = str(charts.stacked_bars([], [("<b>", "x")], 'runs "<script>'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    legend = str(charts.legend([("<i>", "x")], {}))
    assert "<i>" not in legend


def test_meters_and_formats():
    load = str(charts.load_meter(3, 4))
    assert "3 of 4 places in use" in load and 'width="75"' in load
    assert 'width="0"' not in str(charts.load_meter(0, 0))
    durations = str(charts.durations_meter(1.0, 4.0, 8.0))
    assert 'class="meter-p50" x="0" y="0" width="12.5"' in durations
    assert 'class="meter-p95" x="12.5" y="0" width="37.5"' in durations
    assert charts.fmt_seconds(0.25) == "250 ms" and charts.fmt_seconds(75) == "1 min 15 s"
    assert charts.fmt_uptime(3725) == "1 h 02 min 05 s" and charts.fmt_uptime(5) == "5 s"
    assert charts.fmt_bytes(1536) == "1.5 KiB"


# -- the worker's ring -------------------------------------------------------------------------


def test_the_ring_spans_the_whole_life_within_its_bound():
    ring = sampler.Ring(last_cpu=0.0, last_at=0.0)
    rewrites = 0
    for n in range(1, 1000):
        sample = sampler.next_sample(ring, cpu_seconds=n * 0.5, rss=n, now=float(n))
        if ring.ticks % ring.stride == 0:
            rewrites += sampler.add(ring, sample)
        ring.ticks += 1
    assert len(ring.samples) < RING
    assert rewrites >= 3 and ring.stride == 2**rewrites
    assert ring.samples[-1].rss >= 990  # the newest stays
    assert ring.samples[0].at < 200  # and the oldest still reaches back to the start
    assert all(s.cpu == pytest.approx(50.0) for s in ring.samples)  # half a core, throughout


def test_samples_read_back_ignore_what_the_worker_did_not_write():
    key = resources.resources_key("ring-test")
    client = live.sync_client()
    client.delete(key)
    try:
        client.rpush(key, b"1700000005.0 3.5 2048", b"junk", b"1700000000.0 1 1024", b"1 2")
        samples = resources.read_samples("ring-test")
        assert samples == [Sample(1_700_000_000.0, 1.0, 1024), Sample(1_700_000_005.0, 3.5, 2048)]
    finally:
        client.delete(key)
    assert resources.read_samples("ring-test") == []
    assert key in live.instance_keys("ring-test")


# -- the pages ---------------------------------------------------------------------------------


def test_the_overview_draws_the_trends(clients):
    make_run("night-job", "completed", 0, timedelta(minutes=10), 3)
    make_run("night-job", "errored", 23, timedelta(minutes=20), 9)
    html = clients["viewer"].get("/").content.decode()
    section = html[html.index('id="ov-trends"') :]
    assert '<svg class="chart bars"' in section
    assert 'data-count="1"' in section
    assert re.search(r"failure rate <b[^>]*>50.0 %</b>", section)
    # The median and 95th percentile of 3 s and 9 s, as percentile_cont interpolates them.
    assert "night-job" in section and ">6.0 s<" in section and ">8.7 s<" in section


def test_the_overview_with_no_runs_still_draws(clients):
    html = clients["viewer"].get("/").content.decode()
    assert "no runs" in html and "No run ended in the last 24 h." in html
    assert re.search(r"failure rate <b[^>]*>—</b>", html)


def test_the_instance_page_draws_its_samples_and_uptime(clients):
    instance = make_run("charted", "running", None, timedelta(minutes=2), 1)
    key = resources.resources_key(instance.id)
    client = live.sync_client()
    now = timezone.now().timestamp()
    client.rpush(key, resources.encode(Sample(now - 10, 25.0, 50 << 20)))
    client.rpush(key, resources.encode(Sample(now - 5, 75.0, 60 << 20)))
    try:
        html = unescape(clients["viewer"].get(f"/instances/{instance.id}/").content.decode())
    finally:
        client.delete(key)
    section = html[html.index('id="inst-resources"') :]
    assert "CPU: now 75.0 %, peak 75.0 %, 2 samples" in section
    assert "2 samples, one every 5.0 s or so" in section
    assert "Memory: now 60.0 MiB" in section
    assert re.search(
        r'<time class="uptime" data-uptime datetime="[^"]+">1 min \d\d s</time>', section
    )


def test_an_ended_instance_without_samples_says_they_are_gone(clients, ended_instance):
    html = clients["viewer"].get(f"/instances/{ended_instance.id}/").content.decode()
    section = html[html.index('id="inst-resources"') :]
    assert "no samples" in section and "No samples kept" in section
    assert "data-uptime" not in section


@pytest.mark.django_db(transaction=True)
def test_the_overview_serves_the_last_trends_while_a_thread_works_out_the_next():
    make_run("memo", "completed", 0, timedelta(minutes=1), 1)
    first = overview.current_trends()
    assert first.totals == {"completed": 1}
    make_run("memo", "errored", 23, timedelta(minutes=1), 1)
    assert overview.current_trends() is first  # fresh enough: not worked out again
    # Once stale, the page gets the last result at once, and the next one soon after.
    overview._trends_memo = (time.monotonic() - overview.TRENDS_SECONDS - 1, first)
    assert overview.current_trends() is first
    renewed = wait_for(
        lambda: (t := overview.current_trends()) is not first and t, what="the refresh"
    )
    assert renewed.totals == {"completed": 1, "failed": 1}
