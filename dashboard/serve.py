"""The web server: daphne on uvloop.

`python -m dashboard.serve <daphne's arguments>` is `daphne <arguments>` whose Twisted reactor
runs on a uvloop event loop instead of asyncio's own: every line a follower reads, every
WebSocket frame and every request passes through the loop's callbacks, which cost a fraction
under uvloop (bench/README.md, session 8). The policy is set before daphne is imported, since
importing `daphne.server` makes the loop and installs the reactor.
"""

from __future__ import annotations

import asyncio

import uvloop


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
