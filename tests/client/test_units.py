"""Client pieces that need no hub: error mapping, line splitting, addresses, CLI settings and
argument parsing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from client import HostClient, HubClientError, config, iter_json, iter_lines
from client.cli import build_parser, main
from client.cli_output import parse_value, table
from client.errors import error_from_answer
from client.transport import api_base


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (400, b"", "BAD_PARAMETERS", "Bad Request"),
        (401, b"", "NEED_AUTHENTICATION", "Unauthorized"),
        (403, b'{"error": "role viewer may not"}', "NOT_AUTHORIZED", "role viewer may not"),
        (
            404,
            b'{"error": "Sequence x not found", "code": "NOT_FOUND"}',
            "NOT_FOUND",
            "Sequence x not found",
        ),
        (409, b'{"error": "in use"}', "CONFLICT", "in use"),
        (409, b'{"error": "in use", "code": "SEQUENCE_IN_USE"}', "SEQUENCE_IN_USE", "in use"),
        (422, b'{"error": "bad"}', "UNPROCESSABLE_ENTITY", "bad"),
        (422, b'{"error": "bad args", "code": "INVALID_CONFIG"}', "INVALID_CONFIG", "bad args"),
        (507, b'{"error": "full"}', "INSUFFICIENT_RESOURCES", "full"),
        (500, b"oops", "SERVER_ERROR", "oops"),
        (418, b"", "REQUEST_ERROR", "I'm a teapot"),
        # STH 0.18 nests the error; a sequencer refusal is a typed body.
        (
            422,
            b'{"error": {"code": "PRERUNNER_ERROR", "data": "Invalid pkg"}}',
            "UNPROCESSABLE_ENTITY",
            "Invalid pkg",
        ),
        (409, b'{"type": "Unhandled", "state": "Idle", "msg": "cannot"}', "CONFLICT", "cannot"),
    ],
)
def test_errors_carry_status_code_and_message(status, body, code, message) -> None:
    reason = httpx.codes.get_reason_phrase(status)
    exc = error_from_answer(status, body, reason)
    assert (exc.status, exc.code, exc.message) == (status, code, message)
    assert isinstance(exc, HubClientError)
    assert exc.as_json() == {"error": message, "code": code, "status": status}


def test_cannot_connect_is_an_error_with_status_zero() -> None:
    with (
        HostClient(f"http://127.0.0.1:{_closed_port()}") as host,
        pytest.raises(HubClientError) as info,
    ):
        host.get_version()
    assert (info.value.status, info.value.code) == (0, "CANNOT_CONNECT")


def _closed_port() -> int:
    from tests.conftest import free_port

    return free_port()


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://h:8000", "http://h:8000/api/v1"),
        ("http://h:8000/", "http://h:8000/api/v1"),
        ("h:8000", "http://h:8000/api/v1"),
        ("http://h:8000/api/v1/", "http://h:8000/api/v1"),
        ("https://h/hub/api/v1", "https://h/hub/api/v1"),
    ],
)
def test_api_base(given: str, base: str) -> None:
    assert api_base(given) == base


def test_lines_split_across_chunks_and_utf8() -> None:
    chunks = [b"30", b"00\n3001\r\n", "é".encode()[:1], "é".encode()[1:] + b"\nlast"]
    assert list(iter_lines(chunks)) == ["3000", "3001", "é", "last"]
    assert list(iter_json([b'{"a": 1}\n\n', b"[2]\n"])) == [{"a": 1}, [2]]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3000", 3000),
        ("1.5", 1.5),
        ("hello", "hello"),
        ("true", True),
        ("null", None),
        ('"10"', "10"),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("-5", -5),
    ],
)
def test_positional_values_are_json_where_they_parse(text: str, value) -> None:
    assert parse_value(text) == value


def test_table_pads_columns() -> None:
    assert table([["a", 1], ["bbb", None]], ["X", "Y"]).splitlines() == ["X    Y", "a    1", "bbb"]


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SI_CONFIG_PATH", str(tmp_path / "cfg" / "hub.json"))
    monkeypatch.delenv("SI_API_URL", raising=False)
    monkeypatch.delenv("SI_TOKEN", raising=False)
    assert config.effective().api_url == "http://127.0.0.1:8000/api/v1"
    config.set_value("apiUrl", "http://file:1")
    config.set_value("token", "file-token")
    assert (tmp_path / "cfg" / "hub.json").stat().st_mode & 0o777 == 0o600
    assert config.effective().api_url == "http://file:1"
    monkeypatch.setenv("SI_API_URL", "http://env:2")
    assert config.effective().api_url == "http://env:2"
    assert config.effective(api_url="http://opt:3").api_url == "http://opt:3"
    assert config.effective().token == "file-token"
    config.reset_value("all")
    assert config.load_file() == {}


def test_session_remembers_and_explains_a_missing_dash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SI_CONFIG_PATH", str(tmp_path / "hub.json"))
    with pytest.raises(ValueError, match="none was started yet"):
        config.recall("instance")
    config.remember(instance="i-1", sequence="s-1")
    assert (config.recall("instance"), config.recall("sequence")) == ("i-1", "s-1")
    assert (tmp_path / "session.json").is_file()


def test_cli_config_commands(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SI_CONFIG_PATH", str(tmp_path / "hub.json"))
    monkeypatch.delenv("SI_API_URL", raising=False)
    monkeypatch.delenv("SI_TOKEN", raising=False)
    assert main(["config", "set", "apiUrl", "http://127.0.0.1:9999/api/v1"]) == 0
    assert main(["config", "set", "token", "abcdefghijkl"]) == 0
    capsys.readouterr()
    assert main(["config", "print", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["apiUrl"] == "http://127.0.0.1:9999/api/v1"
    assert printed["token"] == "****ijkl"  # never printed whole
    assert main(["config", "set", "apiUrl", "ftp://x"]) == 1
    assert "must start with http" in capsys.readouterr().err
    assert main(["config", "reset", "token"]) == 0
    assert json.loads((tmp_path / "hub.json").read_text()) == {
        "apiUrl": "http://127.0.0.1:9999/api/v1"
    }


def test_parser_takes_json_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--json", "seq", "ls"]).json is True
    assert parser.parse_args(["seq", "ls", "--json"]).json is True
    args = parser.parse_args(["seq", "start", "-", "3000", "10", "-f", "c.json"])
    assert (args.id, args.args, args.config_file) == ("-", ["3000", "10"], "c.json")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["seq", "start", "x", "--config", "{}", "-f", "c.json"])
    assert info.value.code == 2


def test_start_args_refuses_both_forms_and_non_arrays(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SI_CONFIG_PATH", str(tmp_path / "hub.json"))
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["--api-url", url, "seq", "start", "s", "1", "--args", "[2]"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["--api-url", url, "seq", "start", "s", "--args", "3000"]) == 1
    assert "must be a JSON array" in capsys.readouterr().err
    assert main(["--api-url", url, "--json", "hub", "version"]) == 1
    assert json.loads(capsys.readouterr().err)["code"] == "CANNOT_CONNECT"
