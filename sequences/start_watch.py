"""Who wants to know how starts went: the web's metrics (dashboard/metrics.py) listen here.

The domain knows nothing of Prometheus. `push_start`, the one function every start goes through,
is wrapped by `watched`, which tells each listener the start's kind, its outcome ("ok", or the
code of the refusal: "INSUFFICIENT_RESOURCES", "NO_WORKER" when nobody answered, ...) and how
long the web waited between pushing it and the worker's answer. `instances.start` (a start asked
for through the API or the console) is wrapped by `refusals`, which tells the code of every
refusal it answers, those made before anything was pushed (HUB_MAX_INSTANCES, an unknown
sequence, an instance id in use) included.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sequences.errors import HubError
from sequences.models import Instance

log = logging.getLogger(__name__)
P = ParamSpec("P")
Answer = dict[str, Any] | None
# (kind, outcome, seconds)
Listener = Callable[[str, str, float], None]

R = TypeVar("R")
RefusalListener = Callable[[str], None]  # (code)

_listeners: list[Listener] = []
_refusal_listeners: list[RefusalListener] = []


def listen(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def listen_refusals(listener: RefusalListener) -> None:
    if listener not in _refusal_listeners:
        _refusal_listeners.append(listener)


def refusals(start: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(start)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await start(*args, **kwargs)
        except HubError as exc:
            for listener in _refusal_listeners:
                try:
                    listener(exc.code)
                except Exception:
                    log.exception("start refusal listener failed")
            raise

    return wrapper


def outcome(answer: Answer) -> str:
    if answer is None:
        return "NO_WORKER"
    if answer.get("ok"):
        return "ok"
    return str(answer.get("code") or "START_FAILED")


def watched(
    push: Callable[Concatenate[Instance, P], Awaitable[Answer]],
) -> Callable[Concatenate[Instance, P], Awaitable[Answer]]:
    @functools.wraps(push)
    async def wrapper(instance: Instance, *args: P.args, **kwargs: P.kwargs) -> Answer:
        began = time.perf_counter()
        result = "ERROR"  # push_start raised (Redis unreachable, ...)
        try:
            answer = await push(instance, *args, **kwargs)
            result = outcome(answer)
            return answer
        finally:
            seconds = time.perf_counter() - began
            for listener in _listeners:
                try:
                    listener(instance.kind, result, seconds)
                except Exception:  # a listener must never fail a start
                    log.exception("start listener failed")

    return wrapper
