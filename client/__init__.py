"""Python client for Sequence Hub (and Scramjet Transform Hub's API v1), and the `si` CLI.

Sync clients live in `client.sync`, their async twins in `client.aio`; all raise
`HubClientError`. See docs/client.md.
"""

from client.aio import (
    AsyncComponentClient,
    AsyncHostClient,
    AsyncInstanceClient,
    AsyncSequenceClient,
    AsyncSequencerClient,
)
from client.errors import HubClientError
from client.lines import aiter_json, aiter_lines, iter_json, iter_lines
from client.sync import (
    ComponentClient,
    HostClient,
    InstanceClient,
    SequenceClient,
    SequencerClient,
)

__all__ = [
    "AsyncComponentClient",
    "AsyncHostClient",
    "AsyncInstanceClient",
    "AsyncSequenceClient",
    "AsyncSequencerClient",
    "ComponentClient",
    "HostClient",
    "HubClientError",
    "InstanceClient",
    "SequenceClient",
    "SequencerClient",
    "aiter_json",
    "aiter_lines",
    "iter_json",
    "iter_lines",
]
