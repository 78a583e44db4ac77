"""The protocol between the hub and the children that run user code (runner/PROTOCOL.md).

The one home of the names both sides agree on: the descriptors a child starts with, the codes
of the control messages, the names of the streams, the exit codes and the reason each ending is
given. The Python child runtime imports this module, and the fork server preloads it before any
fork (a child under Landlock cannot read the hub's source), so it imports the standard library
only. The Node runtime keeps a copy of the tables; tests/runner/test_protocol.py compares it.
"""

from __future__ import annotations

import signal
from enum import IntEnum
from typing import NamedTuple


class Fd(IntEnum):
    """The descriptors a child starts with, in this order; every other one is closed."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    CONTROL = 3  # both ways: newline-delimited JSON arrays [code, data]
    OUTPUT = 4
    INPUT = 5
    LOG = 6


CHILD_FDS = len(Fd)

# What a child writes, in the order the web lists them: each is read live from Redis and kept
# in the database. The child writes them on Fd.STDOUT, Fd.STDERR, Fd.OUTPUT and Fd.LOG.
STREAMS = ("stdout", "stderr", "output", "log")


class Message(IntEnum):
    """Codes of the control messages `[code, data]`."""

    # child -> supervisor
    PING = 3000  # loaded: the instance is running
    HEALTH = 3001  # answer to HEALTH_CHECK
    STOPPED = 3006  # stop handlers done, streams flushed; exits STOPPED next
    ALIVE = 3010  # keep_alive() was called
    COMPLETED = 3011  # run finished, streams flushed; exits COMPLETED next
    PANG = 3012  # the topics it declares: {provides?, requires?, contentType?} (a request)
    CALL_DONE = 3020  # script mode: a handler call finished
    SCRIPT_LOADED = 3021  # script mode: handlers registered; sent just before PING
    SEQ_REQUEST = 3022  # script mode: a command for another sequencer (a request only)
    # both ways: an event from the sequence, or into it
    EVENT = 5001
    # supervisor -> child
    STOP = 4001
    KILL = 4002
    HEALTH_CHECK = 4004
    DECLARED = 4005  # a PANG applied: {provides, requires} as granted; output may flow
    CALL = 6001  # script mode: run a handler
    SEQ_ANSWER = 6002  # script mode: the answer to a SEQ_REQUEST


class Exit(IntEnum):
    """How a child ends. 128+N is death by signal N (KILLED is SIGKILL)."""

    COMPLETED = 0
    # Never ran user code: the fork server could not set the child up (workdir, limits), the
    # launch spec was bad, or the hub failed the start (no worker took it, spawn failed).
    LAUNCH_FAILED = 20
    BAD_MAIN = 21  # main missing, not a file, or no entry point
    FAILED_ON_START = 22  # import or syntax error; script mode: script() missing or raised
    FAILED_WHILE_RUNNING = 23  # user code raised
    REFUSED = 24  # the worker refused the start for resources; the child never ran
    EXEC_FAILED = 127  # an exec'd runtime (Node) could not be executed
    KILLED = 137
    STOPPED = 138


UNKNOWN_EXIT = -1  # recorded when a child's end was seen without its exit code
SIGNAL_BASE = 128


class Outcome(NamedTuple):
    """How an ending is reported: whether the instance failed (errored) and why."""

    failed: bool
    reason: str


EXIT_REASONS: dict[int, Outcome] = {
    Exit.COMPLETED: Outcome(False, "Instance completed"),
    Exit.KILLED: Outcome(False, "Instance killed"),
    Exit.STOPPED: Outcome(False, "Instance stopped"),
    Exit.BAD_MAIN: Outcome(True, "Bad main: the main file is missing or defines no entry point"),
    Exit.FAILED_ON_START: Outcome(True, "Failed on start: the main module could not be loaded"),
    Exit.FAILED_WHILE_RUNNING: Outcome(
        True, "Failed while running: the sequence raised an exception"
    ),
    Exit.REFUSED: Outcome(True, "Refused for resources"),
}
STOP_TIMEOUT = Outcome(False, "Instance stopped: killed after the stop timeout")
UNASKED_KILL = Outcome(
    True, "Killed by signal SIGKILL that nobody at the hub sent (out of memory?)"
)
# A drained worker stops what still runs at the drain's deadline (its instances: the reason
# of their outcome is followed by this; its sequencers are Killed with it as their reason).
DRAINED = "was drained and the drain's deadline passed"
DRAIN_DEADLINE = "its worker {worker} " + DRAINED
# A worker's orderly stop (SIGTERM or SIGINT of the worker, or of runhub) killed it: not a
# request made on the instance, so a restart policy restarts it (docs/operations.md).
WORKER_SHUTDOWN = Outcome(False, "Instance killed: worker shutdown")
# Its worker's heartbeat lapsed (killed, its machine gone): the instance ends `lost`.
WORKER_LOST = "worker {worker} stopped answering"


def outcome(code: int, killed: bool, stopped: bool) -> Outcome:
    """The outcome of an exit code, as STH reports it. `killed`: the hub killed the child on
    request; `stopped`: it was asked to stop (a kill after the stop timeout is a stop)."""
    if code == Exit.KILLED and stopped and not killed:
        return STOP_TIMEOUT
    if code == Exit.KILLED and not killed:
        # Nobody at the hub sent it (no kill request, no shutdown): the kernel's OOM killer,
        # or the sequence itself. Not "Instance killed", which reads as someone's request.
        return UNASKED_KILL
    if code in EXIT_REASONS:
        return EXIT_REASONS[code]
    if code > SIGNAL_BASE and not killed:
        sig = code - SIGNAL_BASE
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (out of memory?)" if sig == signal.SIGKILL else ""
        return Outcome(True, f"Killed by signal {name}{hint}")
    return Outcome(True, f"Runner failed with exit code {code}")


class Ending:
    """How an ended instance ended, machine-readable (the API's `outcome`, the console's badge
    and list filter). Derived from what the hub records, the status, exit code and reason
    (`ending`), so rows written before outcomes existed get one too."""

    COMPLETED = "completed"  # its code finished (exit 0)
    FAILED = "failed"  # errored: its code raised, a bad main, a signal, a start that failed
    STOPPED = "stopped"  # a stop request: its stop handlers ran (138), or the stop timeout hit
    KILLED = "killed"  # a kill request, a worker shutdown, or a drain deadline
    LOST = "lost"  # its worker stopped answering
    REFUSED = "refused"  # never ran: no worker had room for it (REFUSED, 24)

    ALL = (COMPLETED, FAILED, STOPPED, KILLED, LOST, REFUSED)


class EndedBy:
    """Who or what ended an instance (`endedBy.kind` in the API)."""

    SEQUENCE = "sequence"  # its own code: finished, or raised
    USER = "user"  # a stop or kill request (the user named where the hub knows it)
    TIMEOUT = "timeout"  # a stop request whose stop handlers overran the timeout
    SIGNAL = "signal"  # a signal nobody at the hub sent (out of memory?)
    WORKER_LOST = "workerLost"
    SHUTDOWN = "shutdown"  # core.protocol.WORKER_SHUTDOWN
    DRAIN = "drain"  # core.protocol.DRAINED
    HUB = "hub"  # the hub or a worker never started it (launch failed, refused)


def ending(status: str, exit_code: int | None, reason: str) -> tuple[str, str] | None:
    """(outcome, ended by) of an instance from its recorded status, exit code and reason (an
    `Ending` and an `EndedBy` name), or None while it has not ended."""
    if status == "lost":
        return Ending.LOST, EndedBy.WORKER_LOST
    if status == "errored":
        if exit_code == Exit.REFUSED:
            return Ending.REFUSED, EndedBy.HUB
        if exit_code in (Exit.LAUNCH_FAILED, UNKNOWN_EXIT, None):
            return Ending.FAILED, EndedBy.HUB
        if exit_code is not None and exit_code > SIGNAL_BASE:
            return Ending.FAILED, EndedBy.SIGNAL
        return Ending.FAILED, EndedBy.SEQUENCE
    if status != "completed":
        return None
    # A stop that overran its timeout ends killed (137) but is a stop: its reason says so.
    stopped = exit_code == Exit.STOPPED or reason.startswith(EXIT_REASONS[Exit.STOPPED].reason)
    if reason.endswith(DRAINED):
        return (Ending.STOPPED if stopped else Ending.KILLED), EndedBy.DRAIN
    if reason == WORKER_SHUTDOWN.reason:
        return Ending.KILLED, EndedBy.SHUTDOWN
    if exit_code == Exit.KILLED and reason.startswith(STOP_TIMEOUT.reason):
        return Ending.STOPPED, EndedBy.TIMEOUT
    if stopped:
        return Ending.STOPPED, EndedBy.USER
    if exit_code == Exit.KILLED:
        return Ending.KILLED, EndedBy.USER
    return Ending.COMPLETED, EndedBy.SEQUENCE
