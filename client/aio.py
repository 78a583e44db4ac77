"""The asynchronous twin of `client.sync`, method for method: requests are awaited, streams are
async iterators. Every failure raises `client.errors.HubClientError`.

    async with AsyncHostClient("http://127.0.0.1:8000", token="...") as host:
        seq = await host.send_sequence("examples/lifecycle")
        inst = await seq.start(args=[3000, 10])
        async for line in inst.get_lines("output"):
            print(line)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

from client.calls import (
    ComponentCalls,
    HostCalls,
    InputData,
    InstanceCalls,
    PackageSource,
    SequenceCalls,
    SequencerCalls,
    Steps,
)
from client.lines import aiter_json, aiter_lines
from client.transport import DEFAULT_TIMEOUT, DEFAULT_URL, AsyncTransport


class AsyncHostClient(HostCalls):
    """A hub: sequences, instances, sequencers, components and the hub's own facts.

    `url` is the hub's address (`http://host:8000`) or its API base (`http://host:8000/api/v1`);
    `token` an API token, sent as `Authorization: Bearer <token>`.
    """

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.transport = AsyncTransport(url, token, timeout)

    @property
    def url(self) -> str:
        """The API base every path is relative to."""
        return self.transport.base

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncHostClient({self.url!r})"

    # hub
    async def get_version(self) -> dict[str, Any]:
        """`{service, apiVersion, version, build}`."""
        return await self.transport.call(self._version())

    async def get_load_check(self) -> dict[str, Any]:
        """Load, memory and disk of the hub host (`{avgLoad, currentLoad, memFree, ...}`)."""
        return await self.transport.call(self._load_check())

    def get_log_stream(self) -> AsyncIterator[bytes]:
        """The hub's own log: recent lines, then new ones as they come. It never ends."""
        return self.transport.stream(self._log())

    # sequences
    async def list_sequences(self) -> list[dict[str, Any]]:
        """Every sequence: `[{id, name, version, config, language, instances, ...}]`."""
        return await self.transport.call(self._sequences())

    async def send_sequence(self, source: PackageSource) -> AsyncSequenceClient:
        """Upload a package (bytes, a binary file, a tar.gz path, or a directory, which is
        packed first) and return the new sequence's client."""
        answer = await self.transport.call(self._send_sequence(source))
        return AsyncSequenceClient(answer["id"], self)

    async def get_sequence(self, seq_id: str) -> dict[str, Any]:
        """One sequence's description (by id, or by name: the newest with that name)."""
        return await self.transport.call(self._sequence_info(seq_id))

    def get_sequence_client(self, seq_id: str) -> AsyncSequenceClient:
        """A client for a sequence (no request is made)."""
        return AsyncSequenceClient(seq_id, self)

    async def delete_sequence(self, seq_id: str, force: bool = False) -> dict[str, Any]:
        """Delete a sequence. While instances run the hub refuses (409 `SEQUENCE_IN_USE`)
        unless `force`, which kills them first."""
        return await self.transport.call(self._delete_sequence(seq_id, force))

    # instances
    async def list_instances(self) -> list[dict[str, Any]]:
        """Every instance's info (`[{id, status, sequence, args, ...}]`)."""
        return await self.transport.call(self._instances())

    async def get_instance_info(self, iid: str) -> dict[str, Any]:
        """One instance's info."""
        return await self.transport.call(self._instance_info(iid))

    def get_instance_client(self, iid: str) -> AsyncInstanceClient:
        """A client for an instance (no request is made)."""
        return AsyncInstanceClient(iid, self)

    async def list_entities(self) -> dict[str, Any]:
        """`{"sequences": [...], "instances": [...]}`: both lists in one request."""
        return await self.transport.call(self._entities())

    # topics (docs/topics.md); the names are those of Scramjet's clients
    async def get_topics(self) -> list[dict[str, Any]]:
        """Every topic: `[{topic, contentType, localProvider, created, length, chunks, bytes,
        producers, consumers}]`."""
        return await self.transport.call(self._topics())

    async def create_topic(
        self, name: str, content_type: str = "application/x-ndjson"
    ) -> dict[str, Any]:
        """Make a topic holding `content_type` (`application/x-ndjson`, `text/x-ndjson`,
        `text/plain` or `application/octet-stream`); 400 if it exists."""
        return await self.transport.call(self._create_topic(name, content_type))

    async def delete_topic(self, name: str) -> dict[str, Any]:
        """Delete a topic and what it holds; its readers end."""
        return await self.transport.call(self._delete_topic(name))

    async def send_named_data(
        self, topic: str, data: InputData, content_type: str | None = None, end: bool = False
    ) -> dict[str, Any]:
        """Send to a topic (made if missing): bytes, text, a binary file or an iterable of
        chunks. Without `content_type` the topic's own type is meant; another type than the
        topic's is refused (415). `end` ends the topic's stream: its readers finish."""
        return await self.transport.call(self._send_topic(topic, data, content_type, end))

    def get_named_data(
        self, topic: str, content_type: str | None = None, from_now: bool = False
    ) -> AsyncIterator[bytes]:
        """Follow a topic (made with `content_type` if missing): everything it keeps, then
        live, until its stream is ended or it is deleted; `from_now` skips what it keeps."""
        return self.transport.stream(self._read_topic(topic, content_type, from_now))

    # workers
    async def list_workers(self) -> list[dict[str, Any]]:
        """Every worker: `[{name, hostname, pid, state, capacity, running, free, load, labels,
        sandbox, started, lastSeen, stopped, draining, drainDeadline, drained}]`."""
        return await self.transport.call(self._workers())

    async def get_worker(self, name: str) -> dict[str, Any]:
        """One worker, with the ids of the instances it runs and its sequencers."""
        return await self.transport.call(self._worker_info(name))

    async def drain_worker(self, name: str, deadline: float | None = None) -> dict[str, Any]:
        """Drain a worker (admin): it takes no more starts, its instances may run `deadline`
        seconds more (the hub's default: 300) and are stopped then, and it exits. Answers
        once the worker took the drain, with its description."""
        return await self.transport.call(self._drain_worker(name, deadline))

    # sequencers and components
    async def list_sequencers(self) -> list[dict[str, Any]]:
        """Every sequencer with its state and step list."""
        return await self.transport.call(self._sequencers())

    def get_sequencer_client(self, ident: str) -> AsyncSequencerClient:
        """A client for a sequencer, by id or prefix (no request is made)."""
        return AsyncSequencerClient(ident, self)

    async def list_components(self) -> list[dict[str, Any]]:
        """Every sequence component: `[{name, state, sequencer}]`."""
        return await self.transport.call(self._components())

    async def create_component(self, name: str) -> AsyncComponentClient:
        """Create a sequence component (admin) and return its client."""
        answer = await self.transport.call(self._create_component(name))
        return AsyncComponentClient(
            answer.get("name", name) if isinstance(answer, dict) else name, self
        )

    def get_component_client(self, name: str) -> AsyncComponentClient:
        """A client for a sequence component (no request is made)."""
        return AsyncComponentClient(name, self)

    # observing modes
    async def get_modes_config(self) -> dict[str, Any]:
        """The observing modes configuration: `{source, format, modes, updated, updatedBy}`."""
        return await self.transport.call(self._modes_config())

    async def set_modes_config(
        self, config: str | dict[str, Any], fmt: str | None = None
    ) -> dict[str, Any]:
        """Replace the configuration (admin): a dict, or JSON or YAML text (`fmt` "json" or
        "yaml"; without it the hub tells them apart). 422 INVALID_CONFIG names each problem."""
        return await self.transport.call(self._set_modes_config(config, fmt))

    async def list_modes(self) -> list[dict[str, Any]]:
        """Every mode: `{name, status: Configured|Configurable|NonConfigurable, reasons,
        resources, sequencers}`."""
        return await self.transport.call(self._modes())

    async def get_mode(self, name: str) -> dict[str, Any]:
        return await self.transport.call(self._mode(name))

    async def configure_mode(self, name: str) -> dict[str, Any]:
        """Bring a mode's sequencers up (operator); answers each one's location."""
        return await self.transport.call(self._configure_mode(name))

    async def shutdown_mode(self, name: str) -> dict[str, Any]:
        """Shut a configured mode's sequencers down and free its resources (operator)."""
        return await self.transport.call(self._shutdown_mode(name))

    async def restart_mode_sequencer(self, prefix: str) -> dict[str, Any]:
        """Restart one sequencer of a configured mode (operator): `{mode, sequencer}`."""
        return await self.transport.call(self._restart_mode_sequencer(prefix))

    async def list_resources(self) -> list[dict[str, Any]]:
        """Every resource: `{name, status: InUse|Available, mode, modes}`."""
        return await self.transport.call(self._resources())


class AsyncSequenceClient(SequenceCalls[AsyncHostClient]):
    """One uploaded sequence."""

    async def start(
        self,
        app_config: dict[str, Any] | None = None,
        args: list[Any] | None = None,
        limits: dict[str, Any] | None = None,
        instance_id: str | None = None,
        output_topic: str | None = None,
        input_topic: str | None = None,
        placement: dict[str, Any] | None = None,
    ) -> AsyncInstanceClient:
        """Start an instance; `args` are spread into `run(context, input, *args)` with their
        JSON types; `output_topic` publishes its output to that topic, `input_topic` feeds it
        that topic as input; `placement` (`{"labels": ["gpu"], "worker": "<name>"}`, either key
        optional) names the workers that may run it. Returns once the instance can take input."""
        answer = await self.host.transport.call(
            self._start(app_config, args, limits, instance_id, output_topic, input_topic, placement)
        )
        return AsyncInstanceClient(answer["id"], self.host)

    async def list_instances(self) -> list[str]:
        """Ids of this sequence's instances."""
        return await self.host.transport.call(self._list_instances())

    def get_instance(self, iid: str) -> AsyncInstanceClient:
        """A client for one of its instances (no request is made)."""
        return AsyncInstanceClient(iid, self.host)

    async def get_info(self) -> dict[str, Any]:
        """The sequence's description, with its package.json (`config`) and files."""
        return await self.host.transport.call(self._info())

    async def overwrite(self, source: PackageSource) -> AsyncSequenceClient:
        """Upload a new version; sequences are immutable, so this returns the new one's client."""
        answer = await self.host.transport.call(self._overwrite(source))
        return AsyncSequenceClient(answer["id"], self.host)


class AsyncInstanceClient(InstanceCalls[AsyncHostClient]):
    """One running (or ended) instance."""

    async def get_info(self) -> dict[str, Any]:
        """Status, args, appConfig, sequence, created/started/ended, `terminated`."""
        return await self.host.transport.call(self._info())

    async def get_health(self) -> dict[str, Any]:
        """`{healthy, ...}` from the sequence's health check and the process."""
        return await self.host.transport.call(self._health())

    def get_stream(self, name: str) -> AsyncIterator[bytes]:
        """Chunks of `stdout`, `stderr`, `output` or `log`: everything from the start, then
        live, ending when the instance ends."""
        return self.host.transport.stream(self._stream(name))

    def get_lines(self, name: str) -> AsyncIterator[str]:
        """`get_stream` as lines of text."""
        return aiter_lines(self.get_stream(name))

    async def send_input(
        self, data: InputData, content_type: str = "text/plain", end: bool | None = None
    ) -> Any:
        """Send to the sequence's `input`. `end=False` keeps input open for more; `True` or
        None (the hub's default) closes it after this body."""
        return await self.host.transport.call(self._send("input", data, content_type, end))

    async def send_stdin(self, data: InputData, end: bool | None = None) -> Any:
        """Send to the process's stdin (closed after this body unless `end=False`)."""
        return await self.host.transport.call(
            self._send("stdin", data, "application/octet-stream", end)
        )

    def inout(
        self, data: InputData, content_type: str = "text/plain", end: bool | None = None
    ) -> AsyncIterator[bytes]:
        """Send `data` to the input (as `send_input`) and read the output the sequence writes
        from then on, in one request; it ends when the instance ends."""
        return self.host.transport.stream(self._send("inout", data, content_type, end))

    async def restart(self) -> AsyncInstanceClient:
        """Kill this instance if it runs, and start its sequence again with the same args and
        appConfig; returns the new instance's client (its info says `restartedFrom`)."""
        answer = await self.host.transport.call(self._restart())
        return AsyncInstanceClient(answer["id"], self.host)

    async def send_event(self, name: str, message: Any = None) -> Any:
        """Send an event into the sequence (its `context.on(name, ...)` handlers get it)."""
        return await self.host.transport.call(self._send_event(name, message))

    async def get_event(self, name: str) -> Any:
        """The last message of that event emitted by the sequence, or the next one."""
        return await self.host.transport.call(self._event(name))

    async def get_next_event(self, name: str) -> Any:
        """Wait for the next message of that event."""
        return await self.host.transport.call(self._next_event(name))

    def get_event_stream(self, name: str) -> AsyncIterator[Any]:
        """Messages of that event as they are emitted, until the instance ends."""
        return aiter_json(self.host.transport.stream(self._event_stream(name)))

    async def stop(self, timeout: int = 7000, can_call_keepalive: bool = False) -> dict[str, Any]:
        """Call the sequence's stop handlers, wait up to `timeout` ms, then kill unless it asked
        to keep alive (and `can_call_keepalive`). Returns the info after that."""
        return await self.host.transport.call(self._stop(timeout, can_call_keepalive))

    async def kill(self, remove_immediately: bool = False) -> dict[str, Any]:
        """Kill the whole process tree at once; `remove_immediately` drops its records too."""
        return await self.host.transport.call(self._kill(remove_immediately))


class AsyncSequencerClient(SequencerCalls[AsyncHostClient]):
    """One sequencer, by id or prefix. Commands answer typed bodies (`{"type": "Ok"}`,
    `{"type": "Started", "runId"}`, ...); refusals (Unhandled, IdDoesNotExist, hook failures)
    raise HubClientError whose `body` is the typed answer."""

    async def _run(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.host.transport.call(self._command(name, body))

    async def get_info(self) -> dict[str, Any]:
        """`{id, prefix, state, runId, isOnline, isAvailable, script, component, stepList}`."""
        return await self.host.transport.call(self._info())

    async def load_sequence(self, steps: Steps) -> dict[str, Any]:
        """Load a step list (Idle or Loaded → Loaded)."""
        return await self.host.transport.call(self._steps("loadSequence", steps))

    async def start_sequence(self) -> dict[str, Any]:
        """Run the loaded step list: `{"type": "Started", "runId"}`."""
        return await self._run("startSequence")

    async def submit(self, steps: Steps) -> dict[str, Any]:
        """Load and start in one: `{"type": "Started", "runId"}`."""
        return await self.host.transport.call(self._steps("submit", steps))

    async def add(self, steps: Steps) -> dict[str, Any]:
        """Append steps."""
        return await self.host.transport.call(self._steps("add", steps))

    async def prepend(self, steps: Steps) -> dict[str, Any]:
        """Put steps before the pending ones."""
        return await self.host.transport.call(self._steps("prepend", steps))

    async def replace(self, step_id: str, steps: Steps) -> dict[str, Any]:
        """Replace a pending step with these."""
        return await self.host.transport.call(self._steps("replace", steps, step_id))

    async def insert_after(self, step_id: str, steps: Steps) -> dict[str, Any]:
        """Insert steps after a step."""
        return await self.host.transport.call(self._steps("insertAfter", steps, step_id))

    async def delete(self, step_id: str) -> dict[str, Any]:
        """Delete a pending step."""
        return await self._run("delete", {"id": step_id})

    async def add_breakpoint(self, step_id: str) -> dict[str, Any]:
        """Stop before this pending step."""
        return await self._run("addBreakpoint", {"id": step_id})

    async def remove_breakpoint(self, step_id: str) -> dict[str, Any]:
        """Remove a step's breakpoint."""
        return await self._run("removeBreakpoint", {"id": step_id})

    async def reset(self) -> dict[str, Any]:
        """Drop the pending steps (Loaded → Idle)."""
        return await self._run("reset")

    async def pause(self) -> dict[str, Any]:
        """Breakpoint on the next pending step."""
        return await self._run("pause")

    async def resume(self) -> dict[str, Any]:
        """Remove the pause breakpoint."""
        return await self._run("resume")

    async def abort_sequence(self) -> dict[str, Any]:
        """Run the abort handler and drop the pending steps."""
        return await self._run("abortSequence")

    async def stop(self) -> dict[str, Any]:
        """Run the stop handler and drop the pending steps."""
        return await self._run("stop")

    async def go_online(self) -> dict[str, Any]:
        """Offline → Idle."""
        return await self._run("goOnline")

    async def go_offline(self) -> dict[str, Any]:
        """Idle or Loaded → Offline."""
        return await self._run("goOffline")

    async def diagnostic_mode(self, start_time: str, hint: str) -> dict[str, Any]:
        """Run the diagnostic-mode handler (`start_time` ISO 8601)."""
        return await self._run("diagnosticMode", {"startTime": start_time, "hint": hint})

    async def operations_mode(self) -> dict[str, Any]:
        """Run the operations-mode handler."""
        return await self._run("operationsMode")

    async def shutdown(self) -> dict[str, Any]:
        """End the sequencer for good (→ Killed)."""
        return await self._run("shutdown")

    async def query(self, run_id: str) -> dict[str, Any]:
        """The run's state now: `{"type": "Started"|"Completed"|"Error"|"Invalid", ...}`."""
        return await self.host.transport.call(self._query(run_id))

    async def query_final(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait (up to `timeout` seconds, if given) for the run to finish."""
        return await self.host.transport.call(self._query_final(run_id, timeout))

    async def get_transitions(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` state transitions, oldest first: `{from, to, command, user,
        upstream, response, time}` (`upstream`: the sequencer whose script sent it)."""
        return await self.host.transport.call(self._transitions(limit))

    async def get_links(self) -> dict[str, Any]:
        """`{upstream, downstreams}`: who commanded it last, and whom its script commanded."""
        return await self.host.transport.call(self._links())

    def get_events(self) -> AsyncIterator[dict[str, Any]]:
        """`{state, stepList}` now, then one value per change."""
        return aiter_json(self.host.transport.stream(self._events()))


class AsyncComponentClient(ComponentCalls[AsyncHostClient]):
    """One sequence component: a named slot hosting at most one sequencer."""

    async def get_status(self) -> dict[str, Any]:
        """`{name, state: Idle|Running, sequencer or None}`."""
        return await self.host.transport.call(self._status())

    async def load_script(self, sequence_id: str, prefix: str) -> dict[str, Any]:
        """Start a sequencer named `prefix` running the script `sequence_id`:
        `{"type": "SequencerLocation", "sequencer": {...}}`."""
        return await self.host.transport.call(self._load_script(sequence_id, prefix))

    async def unload_script(self) -> dict[str, Any]:
        """Shut the hosted sequencer down (→ Idle)."""
        return await self.host.transport.call(self._unload_script())

    async def restart(self) -> dict[str, Any]:
        """Unload and load the same script: a fresh sequencer."""
        return await self.host.transport.call(self._restart())
