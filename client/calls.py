"""What each API route looks like on the wire, as `Call`s, shared by the sync and async clients.

Each `*Calls` base class builds requests and, for one sequence, instance, sequencer or
component, holds its id and its host client (sync or async: the type parameter `H`); the clients
in `client.sync` and `client.aio` run the requests. Paths follow docs/api.md and Scramjet
Transform Hub's API v1.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Generic, Self, TypeVar

from client.transport import WAIT, Body, Call, seg

STREAMS = ("stdout", "stderr", "output", "log")
PackageSource = bytes | str | os.PathLike[str] | IO[bytes]
InputData = bytes | str | Iterable[bytes] | IO[bytes]
Steps = list[dict[str, Any]] | dict[str, Any]
H = TypeVar("H")  # the host client a sequence, instance, ... client runs its calls with


def package_bytes(source: PackageSource) -> bytes:
    """The tar.gz to upload: bytes as they are, a binary file's content, a file path's content,
    or a directory packed on the fly (with the same checks as `si seq pack`)."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            from client.pack import pack_to_bytes

            return pack_to_bytes(path)
        return path.read_bytes()
    if hasattr(source, "read"):
        data = source.read()
        return data.encode() if isinstance(data, str) else data
    raise TypeError(f"cannot upload a {type(source).__name__}: give bytes, a path or a file")


def _file_chunks(fh: IO[bytes], size: int = 65536) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk.encode() if isinstance(chunk, str) else chunk


def input_body(data: InputData) -> Body:
    """A request body for input/stdin: bytes, text (utf-8), a binary file (sent as it is read)
    or any iterable of bytes chunks (sent chunked)."""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, io.TextIOBase):
        return data.read().encode()
    if hasattr(data, "read"):
        return _file_chunks(data)  # type: ignore[arg-type]
    return data  # an iterable (or async iterable) of bytes


def step_commands(steps: Steps) -> list[dict[str, Any]]:
    """Steps as the API takes them: `[{type, command, params}]`, or `{"commands": [...]}`."""
    if isinstance(steps, dict):
        steps = steps.get("commands", [])
    if not isinstance(steps, list):
        raise TypeError("steps must be a list of {type, command, params} objects")
    return steps


class HostCalls:
    """Host-level routes: version, load, log, sequences, instances, topics, workers,
    sequencers, components, observing modes."""

    def _version(self) -> Call:
        return Call("GET", "/version")

    def _load_check(self) -> Call:
        return Call("GET", "/load-check")

    def _log(self) -> Call:
        return Call("GET", "/log", timeout=WAIT, headers={"Accept": "*/*"})

    def _sequences(self) -> Call:
        return Call("GET", "/sequences")

    def _send_sequence(self, source: PackageSource) -> Call:
        return Call(
            "POST",
            "/sequence",
            content=package_bytes(source),
            headers={"Content-Type": "application/octet-stream"},
        )

    def _sequence_info(self, seq_id: str) -> Call:
        return Call("GET", f"/sequence/{seg(seq_id)}")

    def _delete_sequence(self, seq_id: str, force: bool) -> Call:
        headers = {"x-seq-kill-inst": "true"} if force else {}
        # An empty JSON object: STH insists on a JSON content type even on DELETE.
        return Call("DELETE", f"/sequence/{seg(seq_id)}", json={}, headers=headers, timeout=WAIT)

    def _instances(self) -> Call:
        return Call("GET", "/instances")

    def _instance_info(self, iid: str) -> Call:
        return Call("GET", f"/instance/{seg(iid)}")

    def _entities(self) -> Call:
        return Call("GET", "/entities")

    def _topics(self) -> Call:
        return Call("GET", "/topics")

    def _create_topic(self, name: str, content_type: str) -> Call:
        return Call("POST", "/topics", json={"id": name, "content-type": content_type})

    def _delete_topic(self, name: str) -> Call:
        return Call("DELETE", f"/topics/{seg(name)}")

    def _send_topic(self, name: str, data: InputData, content_type: str | None, end: bool) -> Call:
        # No Content-Type means the topic's own (application/x-ndjson for a new one).
        headers = {"Content-Type": content_type} if content_type else {}
        if end:
            headers["x-end-stream"] = "true"
        return Call(
            "POST", f"/topic/{seg(name)}", content=input_body(data), headers=headers, timeout=WAIT
        )

    def _read_topic(self, name: str, content_type: str | None, from_now: bool) -> Call:
        # The hub takes a topic type named in Accept as the type of a topic the read makes.
        return Call(
            "GET",
            f"/topic/{seg(name)}",
            params={"from": "now"} if from_now else {},
            headers={"Accept": content_type or "*/*"},
            timeout=WAIT,
        )

    def _workers(self) -> Call:
        return Call("GET", "/workers")

    def _worker_info(self, name: str) -> Call:
        return Call("GET", f"/worker/{seg(name)}")

    def _drain_worker(self, name: str, deadline: float | None) -> Call:
        body = {} if deadline is None else {"deadline": deadline}
        return Call("POST", f"/worker/{seg(name)}/drain", json=body, timeout=WAIT)

    def _sequencers(self) -> Call:
        return Call("GET", "/sequencers")

    def _components(self) -> Call:
        return Call("GET", "/components")

    def _create_component(self, name: str) -> Call:
        return Call("POST", "/components", json={"name": name})

    # observing modes (docs/api.md, "Observing modes")
    def _modes_config(self) -> Call:
        return Call("GET", "/modes/config")

    def _set_modes_config(self, config: str | dict[str, Any], fmt: str | None) -> Call:
        if isinstance(config, dict):
            return Call("PUT", "/modes/config", json=config)
        kind = {"yaml": "application/yaml", "json": "application/json"}.get(fmt or "", "text/plain")
        return Call(
            "PUT",
            "/modes/config",
            content=config.encode(),
            headers={"Content-Type": f"{kind}; charset=utf-8"},
        )

    def _modes(self) -> Call:
        return Call("GET", "/modes")

    def _mode(self, name: str) -> Call:
        return Call("GET", f"/mode/{seg(name)}")

    def _configure_mode(self, name: str) -> Call:
        return Call("POST", f"/mode/{seg(name)}/configure", timeout=WAIT)

    def _shutdown_mode(self, name: str) -> Call:
        return Call("POST", f"/mode/{seg(name)}/shutdown", timeout=WAIT)

    def _restart_mode_sequencer(self, prefix: str) -> Call:
        return Call("POST", f"/modes/sequencer/{seg(prefix)}/restart", timeout=WAIT)

    def _resources(self) -> Call:
        return Call("GET", "/resources")


class SequenceCalls(Generic[H]):
    """Routes of one sequence."""

    def __init__(self, seq_id: str, host: H) -> None:
        self.id = seq_id
        self.host = host

    @classmethod
    def from_id(cls, seq_id: str, host: H) -> Self:
        """A client for the sequence `seq_id` on `host` (no request is made)."""
        return cls(seq_id, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _info(self) -> Call:
        return Call("GET", f"/sequence/{seg(self.id)}")

    def _list_instances(self) -> Call:
        return Call("GET", f"/sequence/{seg(self.id)}/instances")

    def _start(
        self,
        app_config: dict[str, Any] | None,
        args: list[Any] | None,
        limits: dict[str, Any] | None,
        instance_id: str | None,
        output_topic: str | None = None,
        input_topic: str | None = None,
        placement: dict[str, Any] | None = None,
    ) -> Call:
        # appConfig and args always go along: STH's own runners crashed without them.
        body: dict[str, Any] = {"appConfig": app_config or {}, "args": list(args or [])}
        if limits:
            body["limits"] = limits
        if instance_id:
            body["instanceId"] = instance_id
        if output_topic:
            body["outputTopic"] = output_topic
        if input_topic:
            body["inputTopic"] = input_topic
        if placement:
            body["placement"] = placement
        return Call("POST", f"/sequence/{seg(self.id)}/start", json=body, timeout=WAIT)

    def _overwrite(self, source: PackageSource) -> Call:
        return Call(
            "PUT",
            f"/sequence/{seg(self.id)}",
            content=package_bytes(source),
            headers={"Content-Type": "application/octet-stream"},
        )


class InstanceCalls(Generic[H]):
    """Routes of one instance."""

    def __init__(self, iid: str, host: H) -> None:
        self.id = iid
        self.host = host

    @classmethod
    def from_id(cls, iid: str, host: H) -> Self:
        """A client for the instance `iid` on `host` (no request is made)."""
        return cls(iid, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _path(self, tail: str = "") -> str:
        return f"/instance/{seg(self.id)}" + tail

    def _info(self) -> Call:
        return Call("GET", self._path())

    def _health(self) -> Call:
        return Call("GET", self._path("/health"))

    def _stream(self, name: str) -> Call:
        if name not in STREAMS:
            raise ValueError(f"no stream {name!r}: choose one of {', '.join(STREAMS)}")
        return Call(
            "GET", self._path(f"/{name}"), timeout=WAIT, headers={"Accept": "*/*"}, resume=True
        )

    def _send(self, stream: str, data: InputData, content_type: str, end: bool | None) -> Call:
        """A body for `stream`: `input`, `stdin`, or `inout` (input, answered with output)."""
        headers = {"Content-Type": content_type}
        if end is not None:
            headers["x-end-stream"] = "true" if end else "false"
        if stream == "inout":
            headers["Accept"] = "*/*"
        return Call(
            "POST",
            self._path(f"/{stream}"),
            content=input_body(data),
            headers=headers,
            timeout=WAIT,
        )

    def _restart(self) -> Call:
        return Call("POST", self._path("/restart"), json={}, timeout=WAIT)

    def _send_event(self, name: str, message: Any) -> Call:
        return Call("POST", self._path("/_event"), json={"eventName": name, "message": message})

    def _event(self, name: str) -> Call:
        return Call("GET", self._path(f"/event/{seg(name)}"), timeout=WAIT)

    def _next_event(self, name: str) -> Call:
        return Call("GET", self._path(f"/once/{seg(name)}"), timeout=WAIT)

    def _event_stream(self, name: str) -> Call:
        return Call(
            "GET", self._path(f"/events/{seg(name)}"), timeout=WAIT, headers={"Accept": "*/*"}
        )

    def _stop(self, timeout: int, can_call_keepalive: bool) -> Call:
        # The hub answers after the sequence ended or `timeout` passed: wait a little longer.
        return Call(
            "POST",
            self._path("/_stop"),
            json={"timeout": timeout, "canCallKeepalive": can_call_keepalive},
            timeout=timeout / 1000 + 30,
        )

    def _kill(self, remove_immediately: bool) -> Call:
        return Call("POST", self._path("/_kill"), json={"removeImmediately": remove_immediately})


class SequencerCalls(Generic[H]):
    """Routes of one sequencer (`id` is its id or its prefix, such as `ESW.darknight`)."""

    def __init__(self, ident: str, host: H) -> None:
        self.id = ident
        self.host = host

    @classmethod
    def from_id(cls, ident: str, host: H) -> Self:
        """A client for the sequencer `ident` (id or prefix) on `host` (no request is made)."""
        return cls(ident, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _path(self, tail: str = "") -> str:
        return f"/sequencer/{seg(self.id)}" + tail

    def _info(self) -> Call:
        return Call("GET", self._path())

    def _command(
        self, name: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Call:
        return Call(
            "POST", self._path(f"/{name}"), json=body if body is not None else {}, timeout=timeout
        )

    def _steps(self, name: str, steps: Steps, step_id: str | None = None) -> Call:
        body: dict[str, Any] = {"commands": step_commands(steps)}
        if step_id is not None:
            body = {"id": step_id, **body}
        return self._command(name, body)

    def _query(self, run_id: str) -> Call:
        return Call("GET", self._path(f"/query/{seg(run_id)}"))

    def _query_final(self, run_id: str, timeout: float | None) -> Call:
        params = {"timeout": str(timeout)} if timeout is not None else {}
        return Call(
            "GET",
            self._path(f"/queryFinal/{seg(run_id)}"),
            params=params,
            timeout=WAIT if timeout is None else timeout + 30,
        )

    def _events(self) -> Call:
        return Call("GET", self._path("/events"), timeout=WAIT, headers={"Accept": "*/*"})

    def _transitions(self, limit: int) -> Call:
        return Call("GET", self._path("/transitions"), params={"limit": str(limit)})

    def _links(self) -> Call:
        return Call("GET", self._path("/links"))


class ComponentCalls(Generic[H]):
    """Routes of one sequence component (named like `ESW.primary`)."""

    def __init__(self, name: str, host: H) -> None:
        self.name = name
        self.host = host

    @classmethod
    def from_name(cls, name: str, host: H) -> Self:
        """A client for the component `name` on `host` (no request is made)."""
        return cls(name, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def _path(self, tail: str = "") -> str:
        return f"/component/{seg(self.name)}" + tail

    def _status(self) -> Call:
        return Call("GET", self._path("/status"))

    def _load_script(self, sequence_id: str, prefix: str) -> Call:
        return Call(
            "POST",
            self._path("/load-script"),
            json={"sequence": sequence_id, "prefix": prefix},
            timeout=WAIT,
        )

    def _unload_script(self) -> Call:
        return Call("POST", self._path("/unload-script"), json={}, timeout=WAIT)

    def _restart(self) -> Call:
        return Call("POST", self._path("/restart"), json={}, timeout=WAIT)
