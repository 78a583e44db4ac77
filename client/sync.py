"""The synchronous client: HostClient and the clients of one sequence, instance, sequencer and
sequence component. Every failure raises `client.errors.HubClientError`.

    host = HostClient("http://127.0.0.1:8000", token="...")
    seq = host.send_sequence("examples/lifecycle")
    inst = seq.start(args=[3000, 10])
    for line in inst.get_lines("output"):
        print(line)
"""

from __future__ import annotations

from collections.abc import Iterator
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
from client.lines import iter_json, iter_lines
from client.transport import DEFAULT_TIMEOUT, DEFAULT_URL, Transport


class HostClient(HostCalls):
    """A hub: sequences, instances, sequencers, components and the hub's own facts.

    `url` is the hub's address (`http://host:8000`) or its API base (`http://host:8000/api/v1`);
    `token` an API token, sent as `Authorization: Bearer <token>`.
    """

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.transport = Transport(url, token, timeout)

    @property
    def url(self) -> str:
        """The API base every path is relative to."""
        return self.transport.base

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HostClient({self.url!r})"

    # hub
    def get_version(self) -> dict[str, Any]:
        """`{service, apiVersion, version, build}`."""
        return self.transport.call(self._version())

    def get_load_check(self) -> dict[str, Any]:
        """Load, memory and disk of the hub host (`{avgLoad, currentLoad, memFree, ...}`)."""
        return self.transport.call(self._load_check())

    def get_log_stream(self) -> Iterator[bytes]:
        """The hub's own log: recent lines, then new ones as they come. It never ends."""
        return self.transport.stream(self._log())

    # sequences
    def list_sequences(self) -> list[dict[str, Any]]:
        """Every sequence: `[{id, name, version, config, language, instances, ...}]`."""
        return self.transport.call(self._sequences())

    def send_sequence(self, source: PackageSource) -> SequenceClient:
        """Upload a package (bytes, a binary file, a tar.gz path, or a directory, which is
        packed first) and return the new sequence's client."""
        answer = self.transport.call(self._send_sequence(source))
        return SequenceClient(answer["id"], self)

    def get_sequence(self, seq_id: str) -> dict[str, Any]:
        """One sequence's description (by id, or by name: the newest with that name)."""
        return self.transport.call(self._sequence_info(seq_id))

    def get_sequence_client(self, seq_id: str) -> SequenceClient:
        """A client for a sequence (no request is made)."""
        return SequenceClient(seq_id, self)

    def delete_sequence(self, seq_id: str, force: bool = False) -> dict[str, Any]:
        """Delete a sequence. While instances run the hub refuses (409 `SEQUENCE_IN_USE`)
        unless `force`, which kills them first."""
        return self.transport.call(self._delete_sequence(seq_id, force))

    # instances
    def list_instances(self) -> list[dict[str, Any]]:
        """Every instance's info (`[{id, status, sequence, args, ...}]`)."""
        return self.transport.call(self._instances())

    def get_instance_info(self, iid: str) -> dict[str, Any]:
        """One instance's info."""
        return self.transport.call(self._instance_info(iid))

    def get_instance_client(self, iid: str) -> InstanceClient:
        """A client for an instance (no request is made)."""
        return InstanceClient(iid, self)

    def list_entities(self) -> dict[str, Any]:
        """`{"sequences": [...], "instances": [...]}`: both lists in one request."""
        return self.transport.call(self._entities())

    # topics (docs/topics.md); the names are those of Scramjet's clients
    def get_topics(self) -> list[dict[str, Any]]:
        """Every topic: `[{topic, contentType, localProvider, created, length, chunks, bytes,
        producers, consumers}]`."""
        return self.transport.call(self._topics())

    def create_topic(self, name: str, content_type: str = "application/x-ndjson") -> dict[str, Any]:
        """Make a topic holding `content_type` (`application/x-ndjson`, `text/x-ndjson`,
        `text/plain` or `application/octet-stream`); 400 if it exists."""
        return self.transport.call(self._create_topic(name, content_type))

    def delete_topic(self, name: str) -> dict[str, Any]:
        """Delete a topic and what it holds; its readers end."""
        return self.transport.call(self._delete_topic(name))

    def send_named_data(
        self, topic: str, data: InputData, content_type: str | None = None, end: bool = False
    ) -> dict[str, Any]:
        """Send to a topic (made if missing): bytes, text, a binary file or an iterable of
        chunks. Without `content_type` the topic's own type is meant; another type than the
        topic's is refused (415). `end` ends the topic's stream: its readers finish."""
        return self.transport.call(self._send_topic(topic, data, content_type, end))

    def get_named_data(
        self, topic: str, content_type: str | None = None, from_now: bool = False
    ) -> Iterator[bytes]:
        """Follow a topic (made with `content_type` if missing): everything it keeps, then
        live, until its stream is ended or it is deleted; `from_now` skips what it keeps."""
        return self.transport.stream(self._read_topic(topic, content_type, from_now))

    # workers
    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker: `[{name, hostname, pid, state, capacity, running, free, load, labels,
        sandbox, started, lastSeen, stopped, draining, drainDeadline, drained}]`."""
        return self.transport.call(self._workers())

    def get_worker(self, name: str) -> dict[str, Any]:
        """One worker, with the ids of the instances it runs and its sequencers."""
        return self.transport.call(self._worker_info(name))

    def drain_worker(self, name: str, deadline: float | None = None) -> dict[str, Any]:
        """Drain a worker (admin): it takes no more starts, its instances may run `deadline`
        seconds more (the hub's default: 300) and are stopped then, and it exits. Answers
        once the worker took the drain, with its description."""
        return self.transport.call(self._drain_worker(name, deadline))

    # sequencers and components
    def list_sequencers(self) -> list[dict[str, Any]]:
        """Every sequencer with its state and step list."""
        return self.transport.call(self._sequencers())

    def get_sequencer_client(self, ident: str) -> SequencerClient:
        """A client for a sequencer, by id or prefix (no request is made)."""
        return SequencerClient(ident, self)

    def list_components(self) -> list[dict[str, Any]]:
        """Every sequence component: `[{name, state, sequencer}]`."""
        return self.transport.call(self._components())

    def create_component(self, name: str) -> ComponentClient:
        """Create a sequence component (admin) and return its client."""
        answer = self.transport.call(self._create_component(name))
        return ComponentClient(answer.get("name", name) if isinstance(answer, dict) else name, self)

    def get_component_client(self, name: str) -> ComponentClient:
        """A client for a sequence component (no request is made)."""
        return ComponentClient(name, self)

    # observing modes
    def get_modes_config(self) -> dict[str, Any]:
        """The observing modes configuration: `{source, format, modes, updated, updatedBy}`."""
        return self.transport.call(self._modes_config())

    def set_modes_config(
        self, config: str | dict[str, Any], fmt: str | None = None
    ) -> dict[str, Any]:
        """Replace the configuration (admin): a dict, or JSON or YAML text (`fmt` "json" or
        "yaml"; without it the hub tells them apart). 422 INVALID_CONFIG names each problem."""
        return self.transport.call(self._set_modes_config(config, fmt))

    def list_modes(self) -> list[dict[str, Any]]:
        """Every mode: `{name, status: Configured|Configurable|NonConfigurable, reasons,
        resources, sequencers}`."""
        return self.transport.call(self._modes())

    def get_mode(self, name: str) -> dict[str, Any]:
        return self.transport.call(self._mode(name))

    def configure_mode(self, name: str) -> dict[str, Any]:
        """Bring a mode's sequencers up (operator); answers each one's location."""
        return self.transport.call(self._configure_mode(name))

    def shutdown_mode(self, name: str) -> dict[str, Any]:
        """Shut a configured mode's sequencers down and free its resources (operator)."""
        return self.transport.call(self._shutdown_mode(name))

    def restart_mode_sequencer(self, prefix: str) -> dict[str, Any]:
        """Restart one sequencer of a configured mode (operator): `{mode, sequencer}`."""
        return self.transport.call(self._restart_mode_sequencer(prefix))

    def list_resources(self) -> list[dict[str, Any]]:
        """Every resource: `{name, status: InUse|Available, mode, modes}`."""
        return self.transport.call(self._resources())


class SequenceClient(SequenceCalls[HostClient]):
    """One uploaded sequence."""

    def start(
        self,
        app_config: dict[str, Any] | None = None,
        args: list[Any] | None = None,
        limits: dict[str, Any] | None = None,
        instance_id: str | None = None,
        output_topic: str | None = None,
        input_topic: str | None = None,
        placement: dict[str, Any] | None = None,
    ) -> InstanceClient:
        """Start an instance; `args` are spread into `run(context, input, *args)` with their
        JSON types; `output_topic` publishes its output to that topic, `input_topic` feeds it
        that topic as input; `placement` (`{"labels": ["gpu"], "worker": "<name>"}`, either key
        optional) names the workers that may run it. Returns once the instance can take input."""
        answer = self.host.transport.call(
            self._start(app_config, args, limits, instance_id, output_topic, input_topic, placement)
        )
        return InstanceClient(answer["id"], self.host)

    def list_instances(self) -> list[str]:
        """Ids of this sequence's instances."""
        return self.host.transport.call(self._list_instances())

    def get_instance(self, iid: str) -> InstanceClient:
        """A client for one of its instances (no request is made)."""
        return InstanceClient(iid, self.host)

    def get_info(self) -> dict[str, Any]:
        """The sequence's description, with its package.json (`config`) and files."""
        return self.host.transport.call(self._info())

    def overwrite(self, source: PackageSource) -> SequenceClient:
        """Upload a new version; sequences are immutable, so this returns the new one's client."""
        answer = self.host.transport.call(self._overwrite(source))
        return SequenceClient(answer["id"], self.host)


class InstanceClient(InstanceCalls[HostClient]):
    """One running (or ended) instance."""

    def get_info(self) -> dict[str, Any]:
        """Status, args, appConfig, sequence, created/started/ended, `terminated`."""
        return self.host.transport.call(self._info())

    def get_health(self) -> dict[str, Any]:
        """`{healthy, ...}` from the sequence's health check and the process."""
        return self.host.transport.call(self._health())

    def get_stream(self, name: str) -> Iterator[bytes]:
        """Chunks of `stdout`, `stderr`, `output` or `log`: everything from the start, then
        live, ending when the instance ends."""
        return self.host.transport.stream(self._stream(name))

    def get_lines(self, name: str) -> Iterator[str]:
        """`get_stream` as lines of text."""
        return iter_lines(self.get_stream(name))

    def send_input(
        self, data: InputData, content_type: str = "text/plain", end: bool | None = None
    ) -> Any:
        """Send to the sequence's `input`. `end=False` keeps input open for more; `True` or
        None (the hub's default) closes it after this body."""
        return self.host.transport.call(self._send("input", data, content_type, end))

    def send_stdin(self, data: InputData, end: bool | None = None) -> Any:
        """Send to the process's stdin (closed after this body unless `end=False`)."""
        return self.host.transport.call(self._send("stdin", data, "application/octet-stream", end))

    def inout(
        self, data: InputData, content_type: str = "text/plain", end: bool | None = None
    ) -> Iterator[bytes]:
        """Send `data` to the input (as `send_input`) and read the output the sequence writes
        from then on, in one request; it ends when the instance ends."""
        return self.host.transport.stream(self._send("inout", data, content_type, end))

    def restart(self) -> InstanceClient:
        """Kill this instance if it runs, and start its sequence again with the same args and
        appConfig; returns the new instance's client (its info says `restartedFrom`)."""
        answer = self.host.transport.call(self._restart())
        return InstanceClient(answer["id"], self.host)

    def send_event(self, name: str, message: Any = None) -> Any:
        """Send an event into the sequence (its `context.on(name, ...)` handlers get it)."""
        return self.host.transport.call(self._send_event(name, message))

    def get_event(self, name: str) -> Any:
        """The last message of that event emitted by the sequence, or the next one."""
        return self.host.transport.call(self._event(name))

    def get_next_event(self, name: str) -> Any:
        """Wait for the next message of that event."""
        return self.host.transport.call(self._next_event(name))

    def get_event_stream(self, name: str) -> Iterator[Any]:
        """Messages of that event as they are emitted, until the instance ends."""
        return iter_json(self.host.transport.stream(self._event_stream(name)))

    def stop(self, timeout: int = 7000, can_call_keepalive: bool = False) -> dict[str, Any]:
        """Call the sequence's stop handlers, wait up to `timeout` ms, then kill unless it asked
        to keep alive (and `can_call_keepalive`). Returns the info after that."""
        return self.host.transport.call(self._stop(timeout, can_call_keepalive))

    def kill(self, remove_immediately: bool = False) -> dict[str, Any]:
        """Kill the whole process tree at once; `remove_immediately` drops its records too."""
        return self.host.transport.call(self._kill(remove_immediately))


class SequencerClient(SequencerCalls[HostClient]):
    """One sequencer, by id or prefix. Commands answer typed bodies (`{"type": "Ok"}`,
    `{"type": "Started", "runId"}`, ...); refusals (Unhandled, IdDoesNotExist, hook failures)
    raise HubClientError whose `body` is the typed answer."""

    def _run(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.host.transport.call(self._command(name, body))

    def get_info(self) -> dict[str, Any]:
        """`{id, prefix, state, runId, isOnline, isAvailable, script, component, stepList}`."""
        return self.host.transport.call(self._info())

    def load_sequence(self, steps: Steps) -> dict[str, Any]:
        """Load a step list (Idle or Loaded → Loaded)."""
        return self.host.transport.call(self._steps("loadSequence", steps))

    def start_sequence(self) -> dict[str, Any]:
        """Run the loaded step list: `{"type": "Started", "runId"}`."""
        return self._run("startSequence")

    def submit(self, steps: Steps) -> dict[str, Any]:
        """Load and start in one: `{"type": "Started", "runId"}`."""
        return self.host.transport.call(self._steps("submit", steps))

    def add(self, steps: Steps) -> dict[str, Any]:
        """Append steps."""
        return self.host.transport.call(self._steps("add", steps))

    def prepend(self, steps: Steps) -> dict[str, Any]:
        """Put steps before the pending ones."""
        return self.host.transport.call(self._steps("prepend", steps))

    def replace(self, step_id: str, steps: Steps) -> dict[str, Any]:
        """Replace a pending step with these."""
        return self.host.transport.call(self._steps("replace", steps, step_id))

    def insert_after(self, step_id: str, steps: Steps) -> dict[str, Any]:
        """Insert steps after a step."""
        return self.host.transport.call(self._steps("insertAfter", steps, step_id))

    def delete(self, step_id: str) -> dict[str, Any]:
        """Delete a pending step."""
        return self._run("delete", {"id": step_id})

    def add_breakpoint(self, step_id: str) -> dict[str, Any]:
        """Stop before this pending step."""
        return self._run("addBreakpoint", {"id": step_id})

    def remove_breakpoint(self, step_id: str) -> dict[str, Any]:
        """Remove a step's breakpoint."""
        return self._run("removeBreakpoint", {"id": step_id})

    def reset(self) -> dict[str, Any]:
        """Drop the pending steps (Loaded → Idle)."""
        return self._run("reset")

    def pause(self) -> dict[str, Any]:
        """Breakpoint on the next pending step."""
        return self._run("pause")

    def resume(self) -> dict[str, Any]:
        """Remove the pause breakpoint."""
        return self._run("resume")

    def abort_sequence(self) -> dict[str, Any]:
        """Run the abort handler and drop the pending steps."""
        return self._run("abortSequence")

    def stop(self) -> dict[str, Any]:
        """Run the stop handler and drop the pending steps."""
        return self._run("stop")

    def go_online(self) -> dict[str, Any]:
        """Offline → Idle."""
        return self._run("goOnline")

    def go_offline(self) -> dict[str, Any]:
        """Idle or Loaded → Offline."""
        return self._run("goOffline")

    def diagnostic_mode(self, start_time: str, hint: str) -> dict[str, Any]:
        """Run the diagnostic-mode handler (`start_time` ISO 8601)."""
        return self._run("diagnosticMode", {"startTime": start_time, "hint": hint})

    def operations_mode(self) -> dict[str, Any]:
        """Run the operations-mode handler."""
        return self._run("operationsMode")

    def shutdown(self) -> dict[str, Any]:
        """End the sequencer for good (→ Killed)."""
        return self._run("shutdown")

    def query(self, run_id: str) -> dict[str, Any]:
        """The run's state now: `{"type": "Started"|"Completed"|"Error"|"Invalid", ...}`."""
        return self.host.transport.call(self._query(run_id))

    def query_final(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait (up to `timeout` seconds, if given) for the run to finish."""
        return self.host.transport.call(self._query_final(run_id, timeout))

    def get_transitions(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` state transitions, oldest first: `{from, to, command, user,
        upstream, response, time}` (`upstream`: the sequencer whose script sent it)."""
        return self.host.transport.call(self._transitions(limit))

    def get_links(self) -> dict[str, Any]:
        """`{upstream, downstreams}`: who commanded it last, and whom its script commanded."""
        return self.host.transport.call(self._links())

    def get_events(self) -> Iterator[dict[str, Any]]:
        """`{state, stepList}` now, then one value per change."""
        return iter_json(self.host.transport.stream(self._events()))


class ComponentClient(ComponentCalls[HostClient]):
    """One sequence component: a named slot hosting at most one sequencer."""

    def get_status(self) -> dict[str, Any]:
        """`{name, state: Idle|Running, sequencer or None}`."""
        return self.host.transport.call(self._status())

    def load_script(self, sequence_id: str, prefix: str) -> dict[str, Any]:
        """Start a sequencer named `prefix` running the script `sequence_id`:
        `{"type": "SequencerLocation", "sequencer": {...}}`."""
        return self.host.transport.call(self._load_script(sequence_id, prefix))

    def unload_script(self) -> dict[str, Any]:
        """Shut the hosted sequencer down (→ Idle)."""
        return self.host.transport.call(self._unload_script())

    def restart(self) -> dict[str, Any]:
        """Unload and load the same script: a fresh sequencer."""
        return self.host.transport.call(self._restart())
