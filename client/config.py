"""The `si` CLI's settings (`~/.si/hub.json` or `$SI_CONFIG_PATH`) and its session file, which
remembers the last packed, sent and started things so that `-` can stand for them."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.transport import DEFAULT_URL

KEYS = ("apiUrl", "token")
DEFAULTS: dict[str, Any] = {"apiUrl": DEFAULT_URL, "token": ""}
ENV = {"apiUrl": "SI_API_URL", "token": "SI_TOKEN"}
SESSION_KEYS = ("package", "sequence", "instance")


def config_path() -> Path:
    """`$SI_CONFIG_PATH`, else `~/.si/hub.json`."""
    custom = os.environ.get("SI_CONFIG_PATH")
    return Path(custom).expanduser() if custom else Path.home() / ".si" / "hub.json"


def session_path() -> Path:
    """The session file sits beside the config file."""
    return config_path().with_name("session.json")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}): fix it or `si config reset all`"
        ) from None
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write atomically and privately: the file may hold a token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_file() -> dict[str, Any]:
    """What the config file says (no defaults, no environment)."""
    return {k: v for k, v in _read(config_path()).items() if k in KEYS}


def set_value(key: str, value: str) -> None:
    data = _read(config_path())
    data[key] = value
    _write(config_path(), data)


def reset_value(key: str) -> None:
    """Forget one key, or every key with `all`."""
    data = _read(config_path())
    for k in KEYS if key == "all" else (key,):
        data.pop(k, None)
    _write(config_path(), data)


@dataclass
class Settings:
    api_url: str
    token: str
    sources: dict[str, str]


def effective(api_url: str | None = None, token: str | None = None) -> Settings:
    """Settings in force: command-line options, then `SI_API_URL`/`SI_TOKEN`, then the config
    file, then the defaults; `sources` says where each came from."""
    stored = load_file()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given = {"apiUrl": api_url, "token": token}
    for key in KEYS:
        if given[key]:
            values[key], sources[key] = given[key], "option"
        elif os.environ.get(ENV[key]):
            values[key], sources[key] = os.environ[ENV[key]], f"env {ENV[key]}"
        elif stored.get(key):
            values[key], sources[key] = stored[key], str(config_path())
        else:
            values[key], sources[key] = DEFAULTS[key], "default"
    return Settings(values["apiUrl"], values["token"], sources)


def session() -> dict[str, Any]:
    try:
        return _read(session_path())
    except ValueError:
        return {}  # a broken session file only loses the memory of `-`


def remember(**things: str) -> None:
    """Remember the last package, sequence or instance for `-`."""
    data = session()
    data.update(things)
    _write(session_path(), data)


def recall(kind: str) -> str:
    """What `-` means for `kind`, or a ValueError saying there is nothing to recall."""
    value = session().get(kind)
    if not value:
        verb = {"package": "packed", "sequence": "sent", "instance": "started"}[kind]
        raise ValueError(f"'-' means the last {kind} {verb}, and none was {verb} yet")
    return str(value)
