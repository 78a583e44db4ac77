"""/metrics and /health: values from a real hub, parsed as Prometheus parses them, and who may
read them."""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest
from django.test import RequestFactory, override_settings
from prometheus_client.parser import text_string_to_metric_families

from dashboard import metrics
from dashboard.processes import stop_process
from sequences import live
from tests.conftest import QUEUE, free_port, start_web, wait_for
from tests.packaging import python_package, upload

TICKER = """
import asyncio

async def run(context, input, *args):
    print("ticking", flush=True)
    while True:
        await asyncio.sleep(0.05)
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.mark.django_db(transaction=True)
def test_metrics_of_a_running_hub(hub, admin_api):
    from sequences.models import Instance, Worker

    before = scrape(hub.url)
    ticker = upload(admin_api, python_package(TICKER))
    ids = [admin_api.post(f"/sequence/{ticker}/start", json={}).json()["id"] for _ in range(3)]
    try:
        # Stream bytes are counted by the worker as it writes them to Redis.
        def printed() -> Samples | None:
            now = scrape(hub.url)
            grown = value(now, "hub_stream_bytes_total", stream="stdout") - value(
                before, "hub_stream_bytes_total", stream="stdout"
            )
            return now if grown >= 3 * len("ticking\n") else None

        after = wait_for(printed, timeout=30, what="the tickers' stdout to be counted")
        running = Instance.objects.filter(kind="sequence", status="running").count()
        workers = list(Worker.objects.filter(stopped__isnull=True).values_list("name", "capacity"))
        on = list(Instance.objects.filter(id__in=ids).values_list("worker", flat=True))
    finally:
        for iid in ids:
            admin_api.post(f"/instance/{iid}/_kill", json={})

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # This web process's own counts: three starts answered.
    assert grew("hub_starts_total", kind="sequence", outcome="ok") == 3
    assert grew("hub_start_seconds_count", result="ok") == 3
    assert 0 < grew("hub_start_seconds_sum", result="ok") < 3 * 30
    assert grew("hub_start_seconds_bucket", result="ok", le="+Inf") == 3
    # The cluster, read at the scrape.
    assert value(after, "hub_instances", kind="sequence", status="running") == running >= 3
    assert {w["worker"] for w in labelled(after, "hub_worker_capacity")} >= {
        name for name, _ in workers
    } - {""}
    assert value(after, "hub_workers_live") >= 1
    places = {w["worker"]: w for w in labelled(after, "hub_worker_free_places")}
    assert places, "no worker published its free places"
    # Starts spread over the queue's workers by free places: each worker that took some of the
    # three has that many fewer places (its row may be back only at its next beat after a flush).
    capacities = dict(workers)
    for name, count in Counter(on).items():
        assert name in places, f"worker {name} ran a ticker but published no free places"
        if name not in capacities:
            row = wait_for(Worker.objects.filter(name=name).first, what="worker row")
            capacities[name] = row.capacity
        free = value(after, "hub_worker_free_places", worker=name, queue=QUEUE)
        assert 0 <= free <= capacities[name] - count
    assert ("hub_start_queue_depth", (("queue", QUEUE),)) in after
    assert value(after, "hub_start_queue_depth", queue=QUEUE) == 0
    assert value(after, "hub_redis_up") == 1 and value(after, "hub_database_up") == 1
    assert 0 < value(after, "hub_redis_roundtrip_seconds") < 5
    assert 0 < value(after, "hub_database_roundtrip_seconds") < 5
    assert value(after, "process_resident_memory_bytes") > 0


@pytest.mark.django_db(transaction=True)
def test_health_says_what_is_up(hub):
    # 503 ("workers") until the session's worker has registered, a moment after it starts.
    response = wait_for(
        lambda: (r := httpx.get(hub.url + "/health", timeout=30)).status_code == 200 and r,
        timeout=60,
        what="/health to say ok",
    )
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["redis"] == "ok"
    assert body["workers"] >= 1
    assert set(body) == {"status", "database", "redis", "workers"}  # nothing more to tell
    assert httpx.head(hub.url + "/health", timeout=30).status_code == 200


@pytest.mark.django_db
def test_health_names_what_is_down(client, settings):
    settings.CELERY_TASK_DEFAULT_QUEUE = f"nobody-{uuid.uuid4().hex[:6]}"  # no worker serves it
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["down"] == ["workers"]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    live.probe_client.cache_clear()
    try:
        response = client.get("/health")
        body = response.json()
        assert response.status_code == 503
        assert body["down"] == ["redis", "workers"] and body["redis"] == "down"
        assert "127.0.0.1:1" not in response.content.decode()
        # /metrics still answers, saying Redis is down.
        text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
        assert "hub_redis_up 0.0" in text and "hub_database_up 1.0" in text
    finally:
        live.probe_client.cache_clear()


# -- who may read /metrics -------------------------------------------------------------------


def status(address: str, **headers: str) -> int:
    request = RequestFactory().get("/metrics", REMOTE_ADDR=address, headers=headers)
    refused = metrics.metrics_refusal(request)
    return 200 if refused is None else refused.status_code


@override_settings(HUB_METRICS_TOKEN="", HUB_METRICS_ALLOW=[], HUB_TRUSTED_PROXIES=[])
def test_with_nothing_set_only_this_machine_may_read_metrics():
    assert status("127.0.0.1") == 200
    assert status("::1") == 200
    assert status("10.1.2.3") == 403
    # Relayed by a proxy on this machine: not this machine's own request.
    assert status("127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"}) == 403
    assert status("127.0.0.1", **{"X-Real-IP": "203.0.113.9"}) == 403


@override_settings(HUB_METRICS_TOKEN="s3cret-metrics", HUB_METRICS_ALLOW=[])
def test_a_token_lets_its_bearer_in_from_anywhere():
    assert status("203.0.113.9", Authorization="Bearer s3cret-metrics") == 200
    assert status("203.0.113.9", Authorization="Bearer wrong") == 401
    assert status("203.0.113.9") == 401
    assert status("127.0.0.1") == 401  # loopback is no longer enough
    request = RequestFactory().get("/metrics", REMOTE_ADDR="203.0.113.9")
    refused = metrics.metrics_refusal(request)
    assert refused is not None and refused["WWW-Authenticate"].startswith("Bearer")


@override_settings(
    HUB_METRICS_TOKEN="", HUB_METRICS_ALLOW=["10.0.0.0/8"], HUB_TRUSTED_PROXIES=["127.0.0.1"]
)
def test_an_address_list_lets_those_networks_in_as_the_trusted_proxies_tell():
    assert status("10.1.2.3") == 200
    assert status("192.0.2.1") == 403
    assert status("127.0.0.1") == 403  # the list replaces "this machine only"
    # Through the trusted proxy, the client's own address counts ...
    assert status("127.0.0.1", **{"X-Forwarded-For": "10.4.4.4"}) == 200
    assert status("127.0.0.1", **{"X-Forwarded-For": "10.4.4.4, 198.51.100.1"}) == 403
    # ... and an untrusted peer's header is not believed.
    assert status("198.51.100.1", **{"X-Forwarded-For": "10.4.4.4"}) == 403


@override_settings(HUB_METRICS_TOKEN="t0ken", HUB_METRICS_ALLOW=["10.0.0.0/8"])
def test_token_or_address_either_will_do():
    assert status("10.1.2.3") == 200
    assert status("192.0.2.1", Authorization="Bearer t0ken") == 200
    assert status("192.0.2.1") == 401


@pytest.mark.django_db(transaction=True)
def test_a_refused_start_and_a_token_over_http(tmp_path, people):
    """A web whose queue no worker serves: its start is refused NO_WORKER, counted with its
    wait, and left on the start list; /metrics wants the token, /health does not."""
    queue = f"metrics-{uuid.uuid4().hex[:6]}"
    web = start_web(
        tmp_path,
        free_port(),
        HUB_QUEUE=queue,
        HUB_START_TIMEOUT="1",
        HUB_METRICS_TOKEN="http-metrics-token",
    )
    url = f"http://127.0.0.1:{web.port}"
    auth = {"Authorization": "Bearer http-metrics-token"}
    try:
        assert httpx.get(url + "/metrics", timeout=30).status_code == 401
        with httpx.Client(base_url=url + "/api/v1", headers=people["admin"].headers()) as api:
            seq = upload(api, python_package(TICKER))
            answer = api.post(f"/sequence/{seq}/start", json={}, timeout=30)
            unknown = api.post("/sequence/no-such-sequence/start", json={}, timeout=30)
        assert answer.status_code == 503 and answer.json()["code"] == "NO_WORKER"
        assert unknown.status_code == 404
        samples = scrape(url, **auth)
        assert value(samples, "hub_starts_total", kind="sequence", outcome="NO_WORKER") == 1
        assert value(samples, "hub_start_seconds_count", result="refused") == 1
        # Every refusal a start request got, the one refused before any push included.
        assert value(samples, "hub_start_refusals_total", code="NO_WORKER") == 1
        assert value(samples, "hub_start_refusals_total", code="NOT_FOUND") == 1
        assert 1 <= value(samples, "hub_start_seconds_sum", result="refused") < 5
        assert value(samples, "hub_start_seconds_bucket", result="refused", le="0.5") == 0
        assert value(samples, "hub_start_queue_depth", queue=queue) == 1
        assert value(samples, "hub_database_up") == 1
        health = httpx.get(url + "/health", timeout=30)  # no token needed
        assert health.status_code in (200, 503) and set(health.json()) >= {"status", "workers"}
    finally:
        stop_process(web.proc)
        live.sync_client().delete(live.start_key(queue))
