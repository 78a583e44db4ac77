"""`si`: the command line of Sequence Hub, compatible in spirit with Scramjet's `si`.

    si seq pack examples/lifecycle     # -> examples/lifecycle.tar.gz
    si seq send -                      # '-' is the last packed package
    si seq start - 3000 10             # '-' is the last sent sequence; args 3000 and 10
    si inst output -                   # '-' is the last started instance

Exit status: 0 on success, 1 when the hub refuses or cannot be reached (its message on stderr),
2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client import config
from client.cli_output import Output
from client.errors import HubClientError
from client.pack import PackError
from client.sync import HostClient

Handler = Callable[["Context"], Any]


class Context:
    """What a command handler gets: its parsed arguments, the output and a lazily made client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(bool(getattr(args, "json", False)))
        self._host: HostClient | None = None

    @property
    def host(self) -> HostClient:
        if self._host is None:
            settings = config.effective(
                getattr(self.args, "api_url", None), getattr(self.args, "token", None)
            )
            self._host = HostClient(settings.api_url, settings.token or None)
        return self._host

    def ref(self, kind: str, value: str) -> str:
        """An id as given, or for `-` the last package/sequence/instance this session used."""
        return config.recall(kind) if value == "-" else value

    def close(self) -> None:
        if self._host is not None:
            self._host.close()


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (`si --json seq ls` or
    `si seq ls --json`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts instead of text for people",
    )
    parent.add_argument(
        "--api-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the hub's API (overrides SI_API_URL and the config file)",
    )
    parent.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="API token (overrides SI_TOKEN and the config file)",
    )
    return parent


class Commands:
    """Helper to declare subcommands tersely: `cmds.add("ls", handler, help=...)`."""

    def __init__(
        self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser, title: str
    ) -> None:
        self.common = common
        self.sub = parser.add_subparsers(title=title, metavar="COMMAND", required=True)

    def add(
        self, name: str, handler: Handler, help: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        parser = self.sub.add_parser(
            name, help=help, description=help, aliases=list(aliases), parents=[self.common]
        )
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help: str, aliases: Sequence[str] = ()) -> Commands:
        parser = self.sub.add_parser(
            name, help=help, description=help, aliases=list(aliases), parents=[self.common]
        )
        return Commands(parser, self.common, f"{name} commands")


def build_parser() -> argparse.ArgumentParser:
    from client import cli_hub, cli_inst, cli_modes, cli_sequencers, cli_topic, cli_worker

    common = common_options()
    parser = argparse.ArgumentParser(
        prog="si",
        parents=[common],
        description="Sequence Hub command line: pack, send and start sequences, follow "
        "instances, send to and follow topics, steer sequencers.",
        epilog="'-' in place of an id means the last package packed, sequence sent or "
        "instance started. Settings: si config print.",
    )
    parser.add_argument("-v", "--version", action="version", version="si (sequence-hub) 0.1.0")
    root = Commands(parser, common, "commands")
    cli_hub.register(root)
    cli_inst.register(root)
    cli_topic.register(root)
    cli_sequencers.register(root)
    cli_modes.register(root)
    cli_worker.register(root)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `si` command; returns (and as a script exits with) its status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(args)
    try:
        result = args.handler(ctx)
        return int(result or 0)
    except (HubClientError, PackError, ValueError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return 0  # `si inst output - | head` is not a failure
        ctx.out.error(exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
