"""What operators watch: Prometheus metrics (`GET /metrics`) and a load balancer's `GET /health`.

Two kinds of numbers, kept apart so that none pretends to be more than it is:

- **The cluster, read at scrape time** from the database and Redis, the same from whichever web
  process answers: instances by status, live workers with their capacity, running instances
  and free places (`hub:room:<queue>`), the depth of each start list, the bytes of output the
  workers have streamed (a counter the workers keep in Redis, `live.stream_bytes_key`), and the
  round trip to Redis and to the database, measured by the scrape itself.
- **This web process**, counted as it goes: the starts it pushed and how each went ("ok" or the
  refusal's code), and how long it waited for the worker's answer (a histogram), reported to it
  by `sequences.start_watch`. Each web process counts its own; they restart from zero with the
  process, as Prometheus counters may. Scrape every web process (each has its own port) to see
  them all; through a load balancer, each scrape sees one process's.

/metrics is for the operator's scraper only (`metrics_refusal`); /health says only whether the
database, Redis and a worker answer, for anyone.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from dashboard.views.common import client_ip
from sequences import live, start_watch
from sequences.models import Instance, InstanceStatus, Worker

# -- this process ----------------------------------------------------------------------------

REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    # The default collectors of the process (CPU, memory, file descriptors, Python, GC).
    REGISTRY.register(_collector)

STARTS = Counter(
    "hub_starts",
    "Starts this web process pushed to the workers, by kind and outcome (ok, or the code of "
    "the refusal: INSUFFICIENT_RESOURCES, NO_WORKER, START_FAILED, ...)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "hub_start_refusals",
    "Start requests (API and console) this web process refused, by code: before any push "
    "(INSUFFICIENT_RESOURCES for HUB_MAX_INSTANCES, NOT_FOUND, INSTANCE_EXISTS) or after (the "
    "worker's refusal, NO_WORKER); bodies that do not parse are not counted",
    ["code"],
    registry=REGISTRY,
)
START_SECONDS = Histogram(
    "hub_start_seconds",
    "Time from pushing a start to the worker's answer (the instance can take input), as this "
    "web process waited for it; result is ok or refused",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


def _count_start(kind: str, outcome: str, seconds: float) -> None:
    STARTS.labels(kind=kind, outcome=outcome).inc()
    START_SECONDS.labels(result="ok" if outcome == "ok" else "refused").observe(seconds)


def _count_refusal(code: str) -> None:
    REFUSALS.labels(code=code).inc()


start_watch.listen(_count_start)
start_watch.listen_refusals(_count_refusal)


# -- the cluster, at scrape time -------------------------------------------------------------

KINDS = ("sequence", "script")


def start_queues() -> list[str]:
    """The start lists whose depth is reported: the queue this web pushes starts to."""
    return [settings.CELERY_TASK_DEFAULT_QUEUE]


def live_since() -> Any:
    """Workers whose database heartbeat is newer than this are live (as `detect_lost` sees)."""
    return timezone.now() - timedelta(seconds=settings.HUB_LOST_AFTER)


def database_round_trip() -> float | None:
    """Seconds for `SELECT 1` (None: the database did not answer)."""
    began = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        return None
    return time.perf_counter() - began


def redis_round_trip() -> float | None:
    """Seconds for a PING (None: Redis did not answer within the probe's timeout)."""
    began = time.perf_counter()
    try:
        live.probe_client().ping()
    except (RedisError, OSError):
        return None
    return time.perf_counter() - began


class ClusterCollector(Collector):
    """The gauges and counters read from the database and Redis at each scrape."""

    def collect(self) -> Iterator[Metric]:
        db_seconds = database_round_trip()
        redis_seconds = redis_round_trip()
        yield _gauge("hub_database_up", "1 when the database answered this scrape", db_seconds)
        yield _gauge("hub_redis_up", "1 when Redis answered this scrape", redis_seconds)
        if db_seconds is not None:
            yield GaugeMetricFamily(
                "hub_database_roundtrip_seconds",
                "A SELECT 1 from this web process, timed by the scrape",
                value=db_seconds,
            )
            yield from self._from_database()
        if redis_seconds is not None:
            yield GaugeMetricFamily(
                "hub_redis_roundtrip_seconds",
                "A PING from this web process, timed by the scrape",
                value=redis_seconds,
            )
            yield from self._from_redis()

    def _from_database(self) -> Iterator[Metric]:
        try:
            counts = {
                (kind, status): n
                for kind, status, n in Instance.objects.values_list("kind", "status")
                .annotate(n=Count("id"))
                .values_list("kind", "status", "n")
            }
            workers = list(
                Worker.objects.filter(stopped__isnull=True, last_seen__gte=live_since())
                .order_by("name")
                .values_list("name", "hostname", "capacity", "running")
            )
        except DatabaseError:
            return
        instances = GaugeMetricFamily(
            "hub_instances",
            "Instances the database holds, by kind and status",
            labels=["kind", "status"],
        )
        for kind in sorted(set(KINDS) | {k for k, _ in counts}):
            for status in InstanceStatus.values:
                instances.add_metric([kind, status], counts.get((kind, status), 0))
        yield instances
        capacity = GaugeMetricFamily(
            "hub_worker_capacity",
            "Instances a live worker may run at once (HUB_WORKER_CAPACITY)",
            labels=["worker", "hostname"],
        )
        running = GaugeMetricFamily(
            "hub_worker_running",
            "Instances a live worker ran at its last heartbeat",
            labels=["worker", "hostname"],
        )
        for name, hostname, cap, run in workers:
            capacity.add_metric([name, hostname], cap)
            running.add_metric([name, hostname], run)
        yield capacity
        yield running

    def _from_redis(self) -> Iterator[Metric]:
        client = live.probe_client()
        queues = start_queues()
        try:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(live.start_key(queue))
                pipe.hgetall(live.room_key(queue))
            pipe.hgetall(live.stream_bytes_key())
            replies = pipe.execute()
        except (RedisError, OSError):
            return
        depth = GaugeMetricFamily(
            "hub_start_queue_depth",
            "Start requests waiting on a queue's list for a worker to take them",
            labels=["queue"],
        )
        free = GaugeMetricFamily(
            "hub_worker_free_places",
            "Starts a worker says it can take now (hub:room:<queue>; 0 when full, short of "
            "memory or stopping); lapsed entries of dead workers are left out",
            labels=["worker", "queue"],
        )
        now = time.time()
        names: set[str] = set()
        for i, queue in enumerate(queues):
            depth.add_metric([queue], replies[2 * i])
            room = live.live_room(cast("dict[bytes, bytes]", replies[2 * i + 1]), now)
            names.update(room)
            for worker, places in sorted(room.items()):
                free.add_metric([worker, queue], places)
        yield depth
        yield free
        yield GaugeMetricFamily(
            "hub_workers_live",
            "Workers serving these queues whose heartbeat has not lapsed (hub:room:<queue>)",
            value=len(names),
        )
        streamed = CounterMetricFamily(
            "hub_stream_bytes",
            "Bytes of output the workers have streamed, by stream (kept in Redis: it restarts "
            "from zero with Redis)",
            labels=["stream"],
        )
        for stream, size in sorted(cast("dict[bytes, bytes]", replies[-1]).items()):
            streamed.add_metric([stream.decode()], int(size))
        yield streamed


def _gauge(name: str, documentation: str, seconds: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=0 if seconds is None else 1)


REGISTRY.register(ClusterCollector())


# -- who may read /metrics -------------------------------------------------------------------

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _client_address(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read /metrics; otherwise the refusal (401 or 403).

    - `HUB_METRICS_TOKEN` set: a request sending it (`Authorization: Bearer <token>`) may.
    - `HUB_METRICS_ALLOW` set: a request from one of those networks may (the client's address
      as `client_ip` tells it, so through HUB_TRUSTED_PROXIES only).
    - Neither set: only a request from this machine (loopback) that no proxy relayed (no
      forwarding header): a proxy on the same machine would otherwise pass everybody in.
    """
    token = settings.HUB_METRICS_TOKEN
    allow = settings.HUB_METRICS_ALLOW
    sent = _bearer(request)
    if token and sent is not None and hmac.compare_digest(sent.encode(), token.encode()):
        return None
    address = _client_address(request)
    networks = [ipaddress.ip_network(entry, strict=False) for entry in allow]
    if address is not None and any(address in network for network in networks):
        return None
    if not token and not allow:
        relayed = any(request.META.get(h) for h in FORWARDING_HEADERS)
        if address is not None and address.is_loopback and not relayed:
            return None
        return _refuse(
            403,
            "/metrics answers only this machine unless HUB_METRICS_TOKEN or HUB_METRICS_ALLOW "
            "is set (docs/operations.md, Monitoring)",
        )
    if token:
        text = "wrong metrics token" if sent is not None else "send HUB_METRICS_TOKEN as Bearer"
        response = _refuse(401, text)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return _refuse(403, f"{address or 'this address'} is not in HUB_METRICS_ALLOW")


def _refuse(status: int, text: str) -> HttpResponse:
    return HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = metrics_refusal(request)
    if refused is not None:
        return refused
    response = HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


# -- /health ---------------------------------------------------------------------------------


def live_workers() -> int | None:
    """Workers serving this web's queues whose heartbeat has not lapsed, as the web sees them
    when it places a start (`hub:room:<queue>`); None: Redis did not answer."""
    try:
        pipe = live.probe_client().pipeline(transaction=False)
        for queue in start_queues():
            pipe.hgetall(live.room_key(queue))
        rooms = pipe.execute()
    except (RedisError, OSError):
        return None
    now = time.time()
    return len({name for room in rooms for name in live.live_room(room, now)})


@require_http_methods(["GET", "HEAD"])
def health_view(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer and a worker is live, else 503 naming what is
    down. For load balancers: no authentication, and nothing but up or down and a count."""
    database = database_round_trip() is not None
    redis_ok = redis_round_trip() is not None
    workers = live_workers() if redis_ok else None
    down = [
        name
        for name, ok in (("database", database), ("redis", redis_ok), ("workers", bool(workers)))
        if not ok
    ]
    body: dict[str, Any] = {
        "status": "down" if down else "ok",
        "database": "ok" if database else "down",
        "redis": "ok" if redis_ok else "down",
        "workers": workers or 0,
    }
    if down:
        body["down"] = down
    response = JsonResponse(body, status=503 if down else 200)
    response["Cache-Control"] = "no-store"
    return response
