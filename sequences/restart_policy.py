"""A start's restart policy (`restart` in the start body): what it may say, and when it asks
for a restart. Pure decisions; sequences/restarts.py acts on them.

The semantics follow Kubernetes' `restartPolicy` and systemd's `Restart=`:

- `never` (the default): nothing is restarted.
- `on-failure`: an instance that failed (`errored`: its code raised, it could not start, it was
  killed by a signal nobody asked for) or was lost with its worker is started again.
- `always`: also one that completed by itself (exit 0).

Under both, an instance killed by its worker's orderly shutdown (reason
`core.protocol.WORKER_SHUTDOWN`) or stopped at its worker's drain deadline (reason ending
`core.protocol.DRAINED`) is started again: nobody asked for that end. An instance ended
by a request on it (stop, kill, an operator's restart) is not, under any policy: as with
`systemctl stop`, what an operator ended stays ended.

A chain of restarts is at most `max` long (each copy carries `restart_count`, one more than the
instance it replaces); the n-th restart waits `backoff * 2**(n-1)` seconds after the end, at
most MAX_DELAY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.protocol import DRAINED, WORKER_SHUTDOWN
from sequences.errors import HubError

POLICIES = ("never", "on-failure", "always")
RESTARTING = ("on-failure", "always")
DEFAULT_MAX = 3
MAX_MAX = 100
DEFAULT_BACKOFF = 1.0
MAX_DELAY = 300.0  # the longest wait before a restart, however many came before
FIELDS = ("policy", "max", "backoff")


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "never"
    max: int = 0
    backoff: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "max": self.max, "backoff": self.backoff}


NEVER = RestartPolicy()


def _invalid(message: str) -> HubError:
    # The start body's other fields answer 422 INVALID_CONFIG naming the field (limits too).
    return HubError(422, "INVALID_CONFIG", message)


def parse_restart(value: Any) -> RestartPolicy:
    """`{"policy": "never"|"on-failure"|"always", "max"?: n, "backoff"?: seconds}` (absent or
    null: never); INVALID_CONFIG naming the field otherwise."""
    if value is None:
        return NEVER
    if not isinstance(value, dict):
        raise _invalid(
            'restart must be a JSON object like {"policy": "on-failure", "max": 3, "backoff": 1}'
        )
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise _invalid(f"restart.{unknown[0]} is not a restart setting: use {', '.join(FIELDS)}")
    policy = value.get("policy", "never")
    if policy not in POLICIES:
        raise _invalid(f"restart.policy must be one of {', '.join(POLICIES)} (got {policy!r})")
    count = value.get("max", DEFAULT_MAX)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_MAX:
        raise _invalid(f"restart.max must be a whole number of restarts from 0 to {MAX_MAX}")
    backoff = value.get("backoff", DEFAULT_BACKOFF)
    if (
        isinstance(backoff, bool)
        or not isinstance(backoff, int | float)
        or not 0 <= backoff <= MAX_DELAY
    ):
        raise _invalid(f"restart.backoff must be a number of seconds from 0 to {MAX_DELAY:g}")
    if policy == "never":
        return NEVER
    return RestartPolicy(policy, count, float(backoff))


def wants_restart(policy: str, status: str, exit_code: int | None, reason: str) -> bool:
    """Whether an ended instance is to be started again (before counting and back-off)."""
    if policy not in RESTARTING:
        return False
    if status in ("lost", "errored"):
        return True
    if status != "completed":
        return False
    if reason == WORKER_SHUTDOWN.reason or reason.endswith(DRAINED):
        # Ended by its worker going away (a shutdown, a drain's deadline), not by a request.
        return True
    return policy == "always" and exit_code == 0


def delay(backoff: float, restarts_before: int) -> float:
    """Seconds to wait after an end before the restart that follows `restarts_before` others."""
    return min(backoff * 2 ** min(restarts_before, 30), MAX_DELAY)
