"""Redis: key names and clients shared by the web and the workers.

Live data goes worker → Redis → web; the database holds the durable copy.
- `hub:s:<iid>:<stream>`  Redis stream of chunks `{s: seq, d: bytes}`, then `{eof: 1, n: chunks}`
                          with the outcome when a worker ends it (status, exitcode, reason, ended)
- `hub:ev:<iid>`          Redis stream of events emitted by the sequence `{n: name, m: json}`
- `hub:evlast:<iid>`      hash: last message per event name
- `hub:ctl:<worker>`      list: control messages for one worker's supervisor
- `hub:start:<queue>`     list: start requests any supervisor serving that queue takes
- `hub:owner:<iid>`       the worker that just started an instance, until its row says so
- `hub:reply:<token>`     list: one reply to a request that waits for it
- `hub:worker:<name>`     heartbeat key, expires when the worker stops answering
- `hub:log`               Redis stream of host log lines
- `hub:auth:generation`   counter that token, user and group changes bump (dashboard.identity)
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

STREAMS = ("stdout", "stderr", "output", "log")
HOST_LOG = "hub:log"


def stream_key(iid: str, stream: str) -> str:
    return f"hub:s:{iid}:{stream}"


def events_key(iid: str) -> str:
    return f"hub:ev:{iid}"


def last_events_key(iid: str) -> str:
    return f"hub:evlast:{iid}"


def control_key(worker: str) -> str:
    return f"hub:ctl:{worker}"


def start_key(queue: str) -> str:
    return f"hub:start:{queue}"


OWNER_TTL = 120  # seconds; the worker's batched database write lands long before


def owner_key(iid: str) -> str:
    return f"hub:owner:{iid}"


def reply_key(token: str) -> str:
    return f"hub:reply:{token}"


def worker_key(name: str) -> str:
    return f"hub:worker:{name}"


def instance_keys(iid: str) -> list[str]:
    return [stream_key(iid, s) for s in STREAMS] + [events_key(iid), last_events_key(iid)]


def new_token() -> str:
    return uuid.uuid4().hex


# Blocking reads (BLPOP, XREAD BLOCK) wait longer than any fixed socket timeout would allow.
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": None,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}


def _retrying(retry_class: type) -> dict[str, Any]:
    """A client made by from_url retries nothing: after a Redis restart, the first command on
    each pooled connection (stale, from before) failed. A few quick retries reconnect."""
    return {
        "retry": retry_class(ExponentialBackoff(cap=0.5, base=0.02), 5),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **CLIENT_OPTIONS, **_retrying(Retry))


_async_clients: dict[int, aredis.Redis] = {}


def async_client() -> aredis.Redis:
    """One pool per event loop: redis.asyncio connections belong to the loop that made them."""
    import asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = aredis.Redis.from_url(
            settings.REDIS_URL, max_connections=2000, **CLIENT_OPTIONS, **_retrying(AsyncRetry)
        )
        _async_clients[id(loop)] = client
    return client


def encode_control(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A control message: one JSON line, then raw payload bytes (input data)."""
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def decode_control(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, payload = raw.partition(b"\n")
    return json.loads(head), payload
