"""`si config`, `si seq` and `si hub` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import config
from client.cli_output import key_values, parse_value, short_time, table
from client.pack import pack, pack_to_bytes

if TYPE_CHECKING:
    from client.cli import Commands, Context


# config


def _mask(token: str) -> str:
    if not token:
        return ""
    return "****" + token[-4:] if len(token) > 8 else "****"


def config_print(ctx: Context) -> None:
    settings = config.effective(
        getattr(ctx.args, "api_url", None), getattr(ctx.args, "token", None)
    )
    data = {
        "apiUrl": settings.api_url,
        "token": _mask(settings.token),
        "configPath": str(config.config_path()),
        "sources": settings.sources,
    }
    ctx.out.show(
        data,
        lambda d: "\n".join(
            [
                f"apiUrl  {d['apiUrl']}  ({d['sources']['apiUrl']})",
                f"token   {d['token'] or '(none)'}  ({d['sources']['token']})",
                f"file    {d['configPath']}",
            ]
        ),
    )


def config_set(ctx: Context) -> None:
    key, value = ctx.args.key, ctx.args.value
    if key == "apiUrl" and not value.startswith(("http://", "https://")):
        raise ValueError(f"apiUrl must start with http:// or https://, got {value!r}")
    config.set_value(key, value)
    ctx.out.show({key: value if key != "token" else _mask(value)}, f"{key} set")


def config_reset(ctx: Context) -> None:
    config.reset_value(ctx.args.key)
    ctx.out.show({"reset": ctx.args.key}, f"{ctx.args.key} reset")


# sequences


def seq_pack(ctx: Context) -> None:
    result = pack(ctx.args.dir, ctx.args.output)
    config.remember(package=str(result.path))
    data = {
        "path": str(result.path),
        "size": result.size,
        "files": result.files,
        "name": result.config.get("name"),
        "main": result.config.get("main"),
    }
    ctx.out.show(data, str(result.path))


def _package(ctx: Context, source: str) -> bytes:
    """Bytes to upload for FILE, DIR (packed on the fly) or `-` (the last packed file)."""
    if source == "-":
        source = config.recall("package")
    path = Path(source)
    if path.is_dir():
        return pack_to_bytes(path)
    if not path.is_file():
        raise ValueError(f"{source} is neither a package file nor a directory")
    return path.read_bytes()


def seq_send(ctx: Context) -> None:
    seq = ctx.host.send_sequence(_package(ctx, ctx.args.package))
    config.remember(sequence=seq.id)
    ctx.out.show({"id": seq.id}, seq.id)


def start_args(ctx: Context) -> list[Any]:
    """Args from `--args '[...]'` or positional values, each parsed as JSON where it parses."""
    positional = [parse_value(a) for a in ctx.args.args]
    if ctx.args.args_json is None:
        return positional
    if positional:
        raise ValueError("give args positionally or with --args, not both")
    value = json.loads(ctx.args.args_json)
    if not isinstance(value, list):
        raise ValueError(f"--args must be a JSON array, like '[3000, 10]', got {value!r}")
    return value


def app_config(ctx: Context) -> dict[str, Any] | None:
    text = None
    if ctx.args.config_file:
        text = Path(ctx.args.config_file).read_text(encoding="utf-8")
    elif ctx.args.config_json:
        text = ctx.args.config_json
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("the appConfig must be a JSON object")
    return value


def _limits(ctx: Context) -> dict[str, Any] | None:
    if not ctx.args.limits:
        return None
    value = json.loads(ctx.args.limits)
    if not isinstance(value, dict):
        raise ValueError("--limits must be a JSON object, like '{\"memory\": 256}'")
    return value


def _placement(ctx: Context) -> dict[str, Any] | None:
    placement: dict[str, Any] = {}
    if ctx.args.placement_labels:
        placement["labels"] = list(ctx.args.placement_labels)
    if ctx.args.worker:
        placement["worker"] = ctx.args.worker
    return placement or None


def _start(ctx: Context, seq_id: str) -> str:
    seq = ctx.host.get_sequence_client(seq_id)
    inst = seq.start(
        app_config=app_config(ctx),
        args=start_args(ctx),
        limits=_limits(ctx),
        instance_id=ctx.args.instance_id,
        output_topic=ctx.args.output_topic,
        input_topic=ctx.args.input_topic,
        placement=_placement(ctx),
    )
    config.remember(sequence=seq_id, instance=inst.id)
    return inst.id


def seq_start(ctx: Context) -> None:
    iid = _start(ctx, ctx.ref("sequence", ctx.args.id))
    ctx.out.show({"id": iid}, iid)


def seq_deploy(ctx: Context) -> None:
    source = Path(ctx.args.path)
    if source.is_dir() and ctx.args.output:
        result = pack(source, ctx.args.output)
        config.remember(package=str(result.path))
        body = result.path.read_bytes()
    else:
        body = _package(ctx, ctx.args.path)
    seq = ctx.host.send_sequence(body)
    config.remember(sequence=seq.id)
    iid = _start(ctx, seq.id)
    ctx.out.note(f"sequence {seq.id}")
    ctx.out.show({"sequence": seq.id, "id": iid}, iid)


def _seq_rows(items: list[dict[str, Any]]) -> str:
    rows = [
        [
            s["id"],
            s.get("name"),
            s.get("version"),
            s.get("language"),
            len(s.get("instances") or []),
            short_time(s.get("created")),
        ]
        for s in items
    ]
    return table(rows, ["ID", "NAME", "VERSION", "LANG", "INSTANCES", "CREATED"])


def seq_ls(ctx: Context) -> None:
    ctx.out.show(ctx.host.list_sequences(), _seq_rows)


def seq_info(ctx: Context) -> None:
    info = ctx.host.get_sequence(ctx.ref("sequence", ctx.args.id))
    ctx.out.show(
        info,
        lambda d: key_values(
            d,
            [
                "id",
                "name",
                "version",
                "description",
                "language",
                "sha256",
                "size",
                "created",
                "config",
                "instances",
                "files",
            ],
        ),
    )


def seq_delete(ctx: Context) -> None:
    seq_id = ctx.ref("sequence", ctx.args.id)
    answer = ctx.host.delete_sequence(seq_id, force=ctx.args.force)
    ctx.out.show(answer, f"deleted {seq_id}")


# hub


def hub_version(ctx: Context) -> None:
    ctx.out.show(
        ctx.host.get_version(),
        lambda d: f"{d.get('service', 'hub')} {d.get('version')} (API {d.get('apiVersion')})",
    )


def _gb(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, int | float) else "?"


def hub_load(ctx: Context) -> None:
    def human(d: dict[str, Any]) -> str:
        lines = [
            f"avgLoad      {d.get('avgLoad')} %",
            f"currentLoad  {d.get('currentLoad')} %",
            f"memory       {_gb(d.get('memFree'))} free, {_gb(d.get('memUsed'))} used",
        ]
        for fs in d.get("fsSize") or []:
            lines.append(
                f"disk         {_gb(fs.get('available'))} free of {_gb(fs.get('size'))}"
                f" ({fs.get('mount')})"
            )
        return "\n".join(lines)

    ctx.out.show(ctx.host.get_load_check(), human)


def hub_logs(ctx: Context) -> None:
    ctx.out.write_stream(ctx.host.get_log_stream())


def _add_start_options(parser: Any) -> None:
    parser.add_argument(
        "args",
        nargs="*",
        metavar="ARG",
        help="arguments of run(context, input, *args), each JSON where it "
        "parses: 3000 is a number, hello a string",
    )
    parser.add_argument(
        "--args",
        dest="args_json",
        metavar="JSON",
        help="the arguments as one JSON array, as Scramjet's si takes them",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--config",
        "-s",
        dest="config_json",
        metavar="JSON",
        help="appConfig as a JSON object (context.config)",
    )
    group.add_argument(
        "-f", "--config-file", dest="config_file", metavar="FILE", help="appConfig from a JSON file"
    )
    parser.add_argument("--limits", metavar="JSON", help="limits, like '{\"memory\": 256}'")
    parser.add_argument("--instance-id", metavar="ID", help="choose the instance id")
    parser.add_argument("--output-topic", metavar="TOPIC", help="publish the output to TOPIC")
    parser.add_argument("--input-topic", metavar="TOPIC", help="read the input from TOPIC")
    parser.add_argument(
        "--placement-label",
        "--label",
        dest="placement_labels",
        action="append",
        default=[],
        metavar="LABEL",
        help="run only on a worker that has LABEL (HUB_WORKER_LABELS: gpu, zone=a); repeat it "
        "for several, all needed",
    )
    parser.add_argument(
        "--worker",
        metavar="NAME",
        help="run only on the worker NAME, or on a worker of the host NAME",
    )


def register(root: Commands) -> None:
    cfg = root.group("config", "show and change the CLI's settings", aliases=["c"])
    cfg.add(
        "print", config_print, "show the settings in force and where they come from", aliases=["p"]
    )
    p = cfg.add("set", config_set, "set apiUrl or token")
    p.add_argument("key", choices=["apiUrl", "token"])
    p.add_argument("value")
    p = cfg.add("reset", config_reset, "forget apiUrl, token or all")
    p.add_argument("key", choices=["apiUrl", "token", "all"])

    seq = root.group("seq", "sequences: pack, send, start, list, delete", aliases=["sequence"])
    p = seq.add("pack", seq_pack, "pack a directory into a package (honours .siignore)")
    p.add_argument("dir")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default DIR.tar.gz)")
    p = seq.add("send", seq_send, "upload a package file or a directory ('-': last packed)")
    p.add_argument("package", metavar="FILE|DIR|-")
    p = seq.add("start", seq_start, "start an instance of a sequence ('-': last sent)")
    p.add_argument("id", metavar="ID|-")
    _add_start_options(p)
    p = seq.add("deploy", seq_deploy, "pack (if a directory), send and start", aliases=["run"])
    p.add_argument("path", metavar="DIR|FILE")
    p.add_argument("-o", "--output", metavar="FILE", help="also keep the package in FILE")
    _add_start_options(p)
    seq.add("ls", seq_ls, "list sequences", aliases=["list"])
    p = seq.add("info", seq_info, "describe a sequence", aliases=["get"])
    p.add_argument("id", metavar="ID|-")
    p = seq.add("delete", seq_delete, "delete a sequence", aliases=["rm"])
    p.add_argument("id", metavar="ID|-")
    p.add_argument("-f", "--force", action="store_true", help="kill its running instances first")

    hub = root.group("hub", "the hub itself: version, load, log")
    hub.add("version", hub_version, "the hub's version")
    hub.add("load", hub_load, "load, memory and disk of the hub host")
    hub.add("logs", hub_logs, "follow the hub's log (Ctrl-C to stop)", aliases=["log"])
