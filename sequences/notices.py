"""Live-UI notices: the channel-layer groups console pages join and the messages they hear.

A page joins one group per object it watches (`instance_group`, `sequencer_group`) or list it
shows (INSTANCES, SEQUENCERS, COMPONENTS, MODES). A notice only says "look again": the channel layer
is at-most-once, so pages re-read the database and a lost notice only delays them. Channels
hands a message of type `a.b` to the consumer method `a_b`.

Senders: the domain (sequencer and component changes), the worker's supervisor (instance
changes, the instance's own group at once, the INSTANCES group coalesced). The names live here,
below both the web and the runner, because they meet only through these messages.
"""

from __future__ import annotations

import contextlib
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

# Groups of the list pages (the overview joins INSTANCES and SEQUENCERS).
INSTANCES = "instances"
SEQUENCERS = "sequencers"
COMPONENTS = "components"
MODES = "modes"  # the Observations and Resources pages (sequences/modes.py)

# Message types.
INSTANCE_CHANGED = "instance.changed"
SEQUENCER_CHANGED = "sequencer.changed"
COMPONENTS_CHANGED = "components.changed"
MODES_CHANGED = "modes.changed"


def instance_group(iid: str) -> str:
    """The group of one instance's page."""
    return f"instance-{iid}"


def sequencer_group(sequencer_id: str) -> str:
    """The group of one sequencer's page."""
    return f"sequencer-{sequencer_id}"


async def asend(message: dict[str, Any], *groups: str) -> None:
    """Send `message` to each group, best effort: without a channel layer, or when it fails,
    pages simply hear nothing (they heal on their next snapshot)."""
    layer = get_channel_layer()
    if layer is None:
        return
    with contextlib.suppress(Exception):
        for group in groups:
            await layer.group_send(group, message)


def send(message: dict[str, Any], *groups: str) -> None:
    """`asend` from synchronous code (web threads, Celery tasks); raises what `async_to_sync`
    raises when called from an event loop's thread."""
    async_to_sync(asend)(message, *groups)
