"""Control operations: what the web asks a worker's supervisor to do with a child it runs.

One registry, as in Celery's worker control panel (celery/worker/control.py): each operation
is a coroutine registered under its name by `@op(name)`, called with the supervisor, the
message's header and its payload. Messages come on the worker's control list (`hub:ctl:<name>`)
and are believed only with the hub's MAC (sequences/live.py); an id the worker does not run is
ignored. Other modules add theirs the same way (runner/sequencer_actor.py: `seqcmd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psutil

from core.protocol import Message
from sequences.models import InstanceStatus

if TYPE_CHECKING:  # the supervisor imports this module: its type only, no import cycle
    from runner.supervisor import Child, Supervisor

INPUT_BUFFER_LIMIT = 64 << 20
HEALTH_TIMEOUT = 2.0

Operation = Callable[["Supervisor", dict[str, Any], bytes], Awaitable[None]]
OPERATIONS: dict[str, Operation] = {}


def op(name: str) -> Callable[[Operation], Operation]:
    """Register the decorated coroutine as the control operation `name`."""

    def register(operation: Operation) -> Operation:
        if name in OPERATIONS:
            raise ValueError(f"control operation {name!r} is registered twice")
        OPERATIONS[name] = operation
        return operation

    return register


@op("input")
async def input_stream(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    if child is None or child.input is None or child.input.is_closing():
        return
    if child.links is not None and child.links.input_topic:
        return  # its input comes from a topic (the web answers 405; this is the second lock)
    if not child.input_header_sent:
        ctype = header.get("contentType") or "text/plain"
        child.input.write(f"Content-Type: {ctype}\r\n\r\n".encode())
        child.input_header_sent = True
    _write_limited(sup, child, child.input, payload)
    if header.get("end"):
        child.input.close()


@op("stdin")
async def stdin_stream(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    if child is None or child.stdin is None or child.stdin.is_closing():
        return
    _write_limited(sup, child, child.stdin, payload)
    if header.get("end"):
        child.stdin.close()


def _write_limited(
    sup: Supervisor, child: Child, transport: asyncio.WriteTransport, data: bytes
) -> None:
    # A sequence that never reads its input must not grow the worker without bound.
    if transport.get_write_buffer_size() + len(data) > INPUT_BUFFER_LIMIT:
        sup.emit_chunk(
            child,
            "log",
            log_line(
                "WARN", "input dropped: the sequence is not reading it and 64 MiB wait already"
            ),
        )
        return
    if data:
        transport.write(data)


@op("event")
async def event(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    if child is not None:
        sup.send(
            child,
            Message.EVENT,
            {"eventName": header["eventName"], "message": header.get("message")},
        )


@op("health")
async def health(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    result: dict[str, Any] = {"healthy": False, "reason": "not running on this worker"}
    if child is not None:
        waiter = sup.loop.create_future()
        child.health_waiters.append(waiter)
        sup.send(child, Message.HEALTH_CHECK, {})
        try:
            answer = await asyncio.wait_for(waiter, HEALTH_TIMEOUT)
            result = dict(answer) if isinstance(answer, dict) else {"healthy": bool(answer)}
        except TimeoutError:
            result = {"healthy": False, "reason": "the sequence did not answer in 2 s"}
        result.update(_usage(child))
    await sup.reply(header["reply"], result)


def _usage(child: Child) -> dict[str, Any]:
    info: dict[str, Any] = {"processId": child.pid, "pid": child.pid}
    proc = child.psutil_proc
    if proc is None:
        return info
    with contextlib.suppress(psutil.Error):
        mem = proc.memory_info()
        info["memoryUsage"] = mem.rss
        info["memory"] = mem.rss
        info["cpuTotalUsage"] = sum(proc.cpu_times()[:2])
        info["cpu"] = proc.cpu_percent(interval=None)
        info["limit"] = None  # STH's field; the instance's own limits are in its info
    return info


@op("stop")
async def stop(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    if child is None or child.exit_code is not None:
        return
    timeout_ms = max(0, int(header.get("timeout", 7000)))
    child.stopped, child.kept_alive = True, False
    sup.writer.update(child.iid, status=InstanceStatus.STOPPING)
    sup.notifier.changed(child.iid, status=InstanceStatus.STOPPING)
    sup.send(
        child,
        Message.STOP,
        {"timeout": timeout_ms, "canCallKeepalive": bool(header.get("canCallKeepalive"))},
    )
    if child.stop_timer:
        child.stop_timer.cancel()
    child.stop_timer = sup.loop.create_task(_kill_after(sup, child, timeout_ms / 1000))


async def _kill_after(sup: Supervisor, child: Child, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(child.exited.wait(), seconds)
    if child.exit_code is None and not child.kept_alive:
        sup.kill_tree(child)


@op("kill")
async def kill(sup: Supervisor, header: dict[str, Any], payload: bytes) -> None:
    child = sup.children.get(header["id"])
    if child is None:
        return
    child.remove_immediately = child.remove_immediately or bool(header.get("removeImmediately"))
    if child.exit_code is not None:
        return
    child.killed = True
    sup.writer.update(child.iid, status=InstanceStatus.KILLING)
    sup.notifier.changed(child.iid, status=InstanceStatus.KILLING)
    sup.kill_tree(child)


def log_line(level: str, msg: str) -> bytes:
    return (json.dumps({"ts": int(time.time() * 1000), "level": level, "msg": msg}) + "\n").encode()
