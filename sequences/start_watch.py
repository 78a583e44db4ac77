"""Who wants to know how starts went: the web's metrics (dashboard/metrics.py) listen here.

The domain knows nothing of Prometheus. `push_start`, the one function every start goes through,
is wrapped by `watched`, which tells each listener the start's kind, its outcome ("ok", or the
code of the refusal: "INSUFFICIENT_RESOURCES", "NO_WORKER" when nobody answered, ...) and how
long the web waited between pushing it and the worker's answer.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec

from sequences.models import Instance

log = logging.getLogger(__name__)
P = ParamSpec("P")
Answer = dict[str, Any] | None
# (kind, outcome, seconds)
Listener = Callable[[str, str, float], None]

_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


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
