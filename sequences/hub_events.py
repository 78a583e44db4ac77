"""Things the hub itself did, that an operator should find in the audit log: a worker lost or
shut down (and what that ended), an instance restarted by its restart policy.

The audit log belongs to `accounts`, which the domain and the runner may not import (layers
only look down; the runner does not reach the accounts at all). They announce the event on a
Django signal instead; `accounts` (its AppConfig.ready) connects the receiver that writes the
entry, in every process that has the app installed: the web, the workers, beat.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

log = logging.getLogger(__name__)

# Sent with `action` (e.g. "worker.lost"), `target` (a worker or instance id) and `detail`.
hub_event = Signal()


def record(
    action: str,
    target: str,
    *,
    actor: str | None = None,
    via: str = "hub",
    outcome: str = "ok",
    **detail: Any,
) -> None:
    """Announce one event of the hub's own doing. Never raises: losing an audit entry must
    not stop the loss, shutdown or restart it describes (the failure is logged).

    `actor` names who acted when it is not the hub itself: a sequencer whose script sent a
    command to another (its prefix, `via="sequencer"`; runner/upstream.py)."""
    for _receiver, result in hub_event.send_robust(
        sender=None,
        action=action,
        target=target,
        detail=detail,
        actor=actor,
        via=via,
        outcome=outcome,
    ):
        if isinstance(result, Exception):
            log.error("could not record %s %s: %r", action, target, result)
