"""The Node runtime (runner/node_runtime.js) run as a real process on real descriptors.

Each test builds a JavaScript package in a tmp dir, starts `node runner/node_runtime.js` with the
seven descriptors of runner/PROTOCOL.md, plays the supervisor, and checks what comes out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.protocol import Exit, Message
from tests.conftest import IN_CI

try:
    from tests.runner.node_fixtures import NODE, RUNTIME, NodeChild, make_package
except ModuleNotFoundError:  # tests/ is not a package: pytest put this folder on sys.path
    from node_fixtures import NODE, RUNTIME, NodeChild, make_package  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(
    not shutil.which(NODE) and not IN_CI, reason="node is not installed"
)


DOCS_EXAMPLE = """\
module.exports = async function* (initialNumber = 0, length = 1000) {
    for (let i = initialNumber; i < initialNumber + length; i++) yield i;
}
"""

Start = Callable[..., NodeChild]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(source, args=..., package=..., files=..., input_type=...) -> a running NodeChild."""
    children: list[NodeChild] = []

    def _start(
        source: str,
        *,
        package: dict | None = None,
        files: dict | None = None,
        main: str = "index.js",
        **kwargs: Any,
    ) -> NodeChild:
        root = tmp_path / f"seq{len(children)}"
        pkg = make_package(root, source, main=main, package=package, files=files)
        child = NodeChild(pkg, main=main, **kwargs)
        children.append(child)
        return child

    yield _start
    for child in children:
        child.close()


def run_to_end(child: NodeChild, *, close_input: bool = True) -> tuple[int, bytes]:
    """Closes the input (so sequences reading it can end), then waits: (exit code, output)."""
    if close_input:
        child.close_input()
    code = child.wait()
    return code, child.output.data()


def codes(child: NodeChild) -> list[int]:
    return [code for code, _ in child.received()]


# -- the Scramjet docs' example and args -----------------------------------------------------


def test_docs_example_verbatim_prints_3000_to_3009(start: Start) -> None:
    child = start(DOCS_EXAMPLE, args=[3000, 10])
    code, output = run_to_end(child)
    assert code == 0
    assert output == b"".join(f"{n}\n".encode() for n in range(3000, 3010))
    assert codes(child) == [Message.PING, Message.COMPLETED]


def test_docs_example_without_args_uses_its_defaults(start: Start) -> None:
    child = start(DOCS_EXAMPLE)
    code, output = run_to_end(child)
    assert code == 0
    assert output.splitlines()[0] == b"0"
    assert len(output.splitlines()) == 1000


def test_args_keep_their_json_types_after_the_input(start: Start) -> None:
    child = start(
        "module.exports = function (input, ...args) {"
        " return JSON.stringify({input: typeof input.pipe, args: args.map(a => [typeof a, a])}); }",
        args=[3000, "10", True, None, {"a": 1}, [1, 2]],
    )
    code, output = run_to_end(child)
    assert code == 0
    assert json.loads(output) == {
        "input": "function",
        "args": [
            ["number", 3000],
            ["string", "10"],
            ["boolean", True],
            ["object", None],
            ["object", {"a": 1}],
            ["object", [1, 2]],
        ],
    }


def test_package_json_args_are_the_default_when_the_start_has_none(start: Start) -> None:
    child = start(DOCS_EXAMPLE, package={"args": [5, 2]})
    assert run_to_end(child) == (0, b"5\n6\n")


# -- inputless generators: how the runtime tells them apart ----------------------------------


def test_a_default_on_the_first_parameter_makes_a_function_inputless(start: Start) -> None:
    child = start(
        "module.exports = async (first = 'x', second) => `${first}${second}`;", args=["a", "b"]
    )
    assert run_to_end(child) == (0, b"ab")


def test_without_defaults_the_first_parameter_is_the_input(start: Start) -> None:
    child = start(
        "module.exports = async function* (input, first, second) {"
        " yield typeof input.read; yield first + second; }",
        args=[1, 2],
    )
    assert run_to_end(child) == (0, b"function3\n")


def test_rest_parameters_still_receive_the_input_first(start: Start) -> None:
    child = start("module.exports = (...all) => all.length;", args=[1, 2])
    assert run_to_end(child) == (0, b"3\n")


def test_inputless_property_makes_a_function_without_defaults_inputless(start: Start) -> None:
    child = start(
        "module.exports = async function* (start, count) {"
        " for (let i = start; i < start + count; i++) yield i; };"
        "module.exports.inputless = true;",
        args=[7, 2],
    )
    assert run_to_end(child) == (0, b"7\n8\n")


def test_inputless_false_overrides_the_default_value_heuristic(start: Start) -> None:
    child = start(
        "module.exports = function (input = null, n) { return typeof input.pipe + n; };"
        "module.exports.inputless = false;",
        args=[1],
    )
    assert run_to_end(child) == (0, b"function1")


def test_package_json_hub_inputless_applies_to_the_first_function(start: Start) -> None:
    child = start(
        "module.exports = function* (a, b) { yield a * b; };",
        package={"hub": {"inputless": True}},
        args=[6, 7],
    )
    assert run_to_end(child) == (0, b"42\n")


def test_package_json_from_the_spec_wins_over_the_file(start: Start) -> None:
    child = start(
        "module.exports = function* (a, b) { yield a * b; };",
        package={"hub": {"inputless": False}},
        spec={"package": {"main": "index.js", "hub": {"inputless": True}}},
        args=[6, 7],
    )
    assert run_to_end(child) == (0, b"42\n")


# -- export shapes and return values --------------------------------------------------------


def test_plain_function_returning_a_string_writes_it_as_is(start: Start) -> None:
    child = start("module.exports = function () { return 'hello'; };")
    assert run_to_end(child) == (0, b"hello")


def test_async_function_returning_a_number_writes_a_json_line(start: Start) -> None:
    child = start("module.exports = async function () { return 42; };")
    assert run_to_end(child) == (0, b"42\n")


def test_returning_nothing_completes_with_no_output(start: Start) -> None:
    child = start("module.exports = function () { console.log('side effect'); };")
    assert run_to_end(child) == (0, b"")
    assert child.stdout.data() == b"side effect\n"
    assert codes(child) == [Message.PING, Message.COMPLETED]


def test_async_generator_items_are_encoded_by_type(start: Start) -> None:
    child = start(
        "module.exports = async function* () {"
        " yield 'text as is'; yield '\\n'; yield 1.5; yield true; yield {a: [1]};"
        " yield null; yield undefined; yield Buffer.from([0xff, 0x00]); }"
    )
    code, output = run_to_end(child)
    assert code == 0
    assert output == b'text as is\n1.5\ntrue\n{"a":[1]}\n\xff\x00'


def test_plain_generator_and_this_is_the_context(start: Start) -> None:
    child = start(
        "module.exports = function* (input) { yield this.instanceId; yield this.config; };",
        app_config={"level": 3},
    )
    code, output = run_to_end(child)
    assert code == 0
    assert output == b'00000000-0000-4000-8000-000000000001{"level":3}\n'


def test_returned_array_writes_each_element(start: Start) -> None:
    child = start("module.exports = () => [1, 'two\\n', {three: 3}];")
    assert run_to_end(child) == (0, b'1\ntwo\n{"three":3}\n')


def test_returned_byte_readable_is_passed_through(start: Start) -> None:
    child = start(
        "const { Readable } = require('stream');"
        "module.exports = () => Readable.from([Buffer.from('ab'), Buffer.from('c\\n')],"
        " { objectMode: false });"
    )
    assert run_to_end(child) == (0, b"abc\n")


def test_returned_object_readable_writes_json_lines(start: Start) -> None:
    child = start(
        "const { Readable } = require('stream');"
        "module.exports = async () => Readable.from([{n: 1}, {n: 2}]);"
    )
    assert run_to_end(child) == (0, b'{"n":1}\n{"n":2}\n')


def test_ndjson_content_type_on_the_returned_stream_quotes_strings(start: Start) -> None:
    child = start(
        "const { Readable } = require('stream');"
        "module.exports = () => Object.assign(Readable.from(['a', 1]),"
        " { contentType: 'application/x-ndjson' });"
    )
    assert run_to_end(child) == (0, b'"a"\n1\n')


def test_promise_of_an_async_iterable(start: Start) -> None:
    child = start(
        "module.exports = async function () {"
        " await new Promise(r => setTimeout(r, 10));"
        " return (async function* () { yield 'x'; yield 'y'; })(); };"
    )
    assert run_to_end(child) == (0, b"xy")


def test_pipeline_feeds_each_output_into_the_next_function(start: Start) -> None:
    child = start(
        "module.exports = ["
        " async function* (input, n) { for (let i = 0; i < n; i++) yield i; },"
        " async function* (input) { for await (const x of input) yield x * 10; },"
        " async function* (input) { for await (const x of input) yield `<${x}>`; },"
        "];",
        args=[3],
    )
    assert run_to_end(child) == (0, b"<0><10><20>")


# STH's inert-sequence-2 reference app, with a shorter pause: the first step returns an async
# generator *function*, which STH turns into a stream (scramjet's DataStream.from calls it).
RETURNS_A_GENERATOR_FUNCTION = """\
module.exports = [
    async function (_stream) {
        let x = 0;
        return async function* () {
            while (++x < 5) {
                yield { a: x };
                await new Promise((res) => setTimeout(res, 20));
            }
        };
    },
    async function (stream) {
        for await (const { a } of stream) console.log({ x: a });
    },
];
"""


def test_a_step_returning_an_async_generator_function_streams_its_items(start: Start) -> None:
    child = start(RETURNS_A_GENERATOR_FUNCTION)
    started = time.monotonic()
    assert run_to_end(child) == (0, b"")
    assert child.stdout.data() == b"{ x: 1 }\n{ x: 2 }\n{ x: 3 }\n{ x: 4 }\n"
    # Every item waited for its pause: the last step really consumed a stream, not one value.
    assert time.monotonic() - started >= 0.06


def test_a_step_returning_a_generator_function_is_called_without_arguments(start: Start) -> None:
    child = start(
        "module.exports = ["
        " function (input, n) { return function* (...got) { yield got.length; yield n; }; },"
        " async function* (input) { for await (const v of input) yield `<${v}>`; },"
        "];",
        args=[7],
    )
    assert run_to_end(child) == (0, b"<0><7>")


def test_a_step_returning_a_function_gets_that_function_s_stream(start: Start) -> None:
    child = start(
        "const { Readable } = require('stream');"
        "module.exports = ["
        " () => async () => Readable.from(['a', 'b']),"
        " () => () => async function* () { yield 'nested'; },"
        "];"
    )
    # The first step's stream goes unread by the second, as in STH: only the last step is output.
    assert run_to_end(child) == (0, b"nested")


def test_the_last_step_returning_a_generator_function_writes_its_items(start: Start) -> None:
    child = start(
        "const gen = async function* () { yield {a: 1}; yield 'b'; };"
        "gen.contentType = 'application/x-ndjson';"
        "module.exports = function (input) { return gen; };"
    )
    assert run_to_end(child) == (0, b'{"a":1}\n"b"\n')


def test_a_step_whose_function_returns_nothing_fails_the_pipeline(start: Start) -> None:
    child = start("module.exports = [() => () => undefined, async function* (input) {}];")
    code, _ = run_to_end(child)
    assert code == Exit.FAILED_WHILE_RUNNING
    assert b"returned nothing" in child.stderr.data()


def test_pipeline_with_a_descriptor_object_first(start: Start) -> None:
    child = start(
        "module.exports = [ { requires: '', contentType: 'application/x-ndjson' },"
        " async function* (input) { for await (const x of input) yield x.v + 1; } ];",
        input_type="text/plain",
    )
    child.write_input(b'{"v": 1}\n{"v": 2}\n')
    assert run_to_end(child) == (0, b"2\n3\n")


def test_transpiled_es_module_default_export(start: Start) -> None:
    child = start(
        "Object.defineProperty(exports, '__esModule', { value: true });"
        "exports.default = function () { return 'from default'; };"
    )
    assert run_to_end(child) == (0, b"from default")


def test_es_module_main_is_imported(start: Start) -> None:
    child = start("export default async function* () { yield 'esm'; }", main="index.mjs")
    assert run_to_end(child) == (0, b"esm")


def test_package_node_modules_are_resolvable(start: Start) -> None:
    child = start(
        "const shout = require('shout'); module.exports = () => shout('hi');",
        files={
            "node_modules/shout/package.json": '{"name": "shout", "main": "lib.js"}',
            "node_modules/shout/lib.js": "module.exports = s => s.toUpperCase() + '!';",
        },
    )
    assert run_to_end(child) == (0, b"HI!")


def test_main_without_extension_resolves_like_require(start: Start) -> None:
    child = start("module.exports = () => 'ok';", spec={"main": "index"})
    assert run_to_end(child) == (0, b"ok")


# -- input ---------------------------------------------------------------------------------


ECHO_INPUT = """\
module.exports = async function* (input) {
    for await (const item of input) yield JSON.stringify([typeof item,
        Buffer.isBuffer(item) ? item.toString('hex') : item]) + '\\n';
};
"""


def test_text_input_arrives_as_lines_with_newlines_kept(start: Start) -> None:
    child = start(ECHO_INPUT, input_type="text/plain")
    child.write_input(b"first\nsec")
    time.sleep(0.05)
    # a two-byte UTF-8 character split across writes must not be mangled
    child.write_input(b"ond \xc5")
    time.sleep(0.05)
    child.write_input(b"\x82\nno newline at end")
    code, output = run_to_end(child)
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [
        ["string", "first\n"],
        ["string", "second ł\n"],
        ["string", "no newline at end"],
    ]


def test_octet_stream_input_arrives_as_buffers(start: Start) -> None:
    child = start(ECHO_INPUT, input_type="application/octet-stream")
    child.write_input(b"\x00\x01\xff")
    code, output = run_to_end(child)
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [["object", "0001ff"]]


def test_ndjson_input_arrives_parsed_and_bad_lines_are_logged(start: Start) -> None:
    child = start(ECHO_INPUT, input_type="application/x-ndjson; charset=utf-8")
    child.write_input(b'{"a": 1}\n\n[1, 2]\nnot json\n"s"')
    code, output = run_to_end(child)
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [
        ["object", {"a": 1}],
        ["object", [1, 2]],
        ["string", "s"],
    ]
    errors = [e for e in child.log_entries() if e["level"] == "ERROR"]
    assert errors[0]["data"]["line"] == "not json\n"
    assert b"skipped an input line that is not JSON" in child.stderr.data()


def test_unknown_input_content_type_arrives_as_buffers(start: Start) -> None:
    child = start(ECHO_INPUT, input_type="text/csv")
    child.write_input(b"a,b\n")
    code, output = run_to_end(child)
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [["object", "612c620a"]]


def test_input_without_header_bytes_yet_waits_and_empty_input_ends(start: Start) -> None:
    child = start(
        "module.exports = async (input) => { let n = 0;"
        " for await (const _ of input) n++; return n; };"
    )
    assert run_to_end(child) == (0, b"0\n")


def test_a_sequence_that_ignores_input_still_completes(start: Start) -> None:
    child = start("module.exports = () => 'done';", input_type="text/plain")
    child.write_input(b"unread\n" * 1000)
    code, output = run_to_end(child, close_input=False)
    assert (code, output) == (0, b"done")


def test_stdin_is_the_process_stdin(start: Start) -> None:
    child = start(
        "module.exports = async () => { let s = '';"
        " for await (const c of process.stdin) s += c; return s.toUpperCase(); };"
    )
    os.write(child.stdin_w, b"typed")
    os.close(child.stdin_w)
    child.stdin_w = -1
    assert run_to_end(child) == (0, b"TYPED")


# -- context: events, logger, health ---------------------------------------------------------


def test_emit_sends_an_event_and_on_receives_them(start: Start) -> None:
    child = start(
        "module.exports = function () {"
        " this.emit('ready', {n: 1});"
        " return new Promise(resolve =>"
        "   this.on('ping', m => { this.emit('pong', m); resolve(); }));"
        "};"
    )
    assert child.wait_for(Message.EVENT) == {"eventName": "ready", "message": {"n": 1}}
    child.send(Message.EVENT, {"eventName": "ping", "message": [1, "two"]})
    assert child.wait_for(Message.EVENT) == {"eventName": "pong", "message": [1, "two"]}
    assert run_to_end(child) == (0, b"")


def test_logger_writes_json_lines_to_the_log_stream(start: Start) -> None:
    child = start(
        "module.exports = function () {"
        " this.logger.info('hello', {k: 1}); this.logger.warn('careful');"
        " this.logger.error('bad', new Error('boom')); };"
    )
    assert run_to_end(child)[0] == 0
    entries = [e for e in child.log_entries() if e["msg"] in ("hello", "careful", "bad")]
    assert [(e["level"], e["msg"]) for e in entries] == [
        ("INFO", "hello"),
        ("WARN", "careful"),
        ("ERROR", "bad"),
    ]
    assert entries[0]["data"] == {"k": 1}
    assert "data" not in entries[1]
    assert entries[2]["data"]["message"] == "boom"
    assert isinstance(entries[0]["ts"], int)


def test_health_check_replies_healthy_by_default(start: Start) -> None:
    child = start("module.exports = () => new Promise(() => {});")
    child.wait_for(Message.PING)
    child.send(Message.HEALTH_CHECK)
    assert child.wait_for(Message.HEALTH) == {"healthy": True}


def test_monitoring_handler_can_report_unhealthy(start: Start) -> None:
    child = start(
        "module.exports = function () { this.addMonitoringHandler(() => ({healthy: false}));"
        " return new Promise(() => {}); };"
    )
    child.wait_for(Message.PING)
    child.send(Message.HEALTH_CHECK)
    assert child.wait_for(Message.HEALTH) == {"healthy": False}


# -- stop, kill, end ---------------------------------------------------------------------------


STOPPABLE = """\
module.exports = function () {
    this.addStopHandler(async (timeout, canCallKeepalive) => {
        this.emit('stopping', {timeout, canCallKeepalive});
        await new Promise(r => setTimeout(r, 50));
        if (this.config.keepAlive) this.keepAlive(5000);
    });
    this.addKillHandler(() => require('fs').writeFileSync('killed.txt', 'yes'));
    return (async function* () {
        for (let i = 0; ; i++) { yield i; await new Promise(r => setTimeout(r, 20)); }
    })();
};
"""


def test_stop_runs_stop_handlers_then_exits_138(start: Start) -> None:
    child = start(STOPPABLE)
    child.wait_for(Message.PING)
    child.send(Message.STOP, {"timeout": 2000, "canCallKeepalive": False})
    assert child.wait_for(Message.EVENT) == {
        "eventName": "stopping",
        "message": {"timeout": 2000, "canCallKeepalive": False},
    }
    child.wait_for(Message.STOPPED)
    assert child.wait() == Exit.STOPPED
    assert child.output.data().startswith(b"0\n")


def test_stop_with_keep_alive_keeps_the_instance_running(start: Start) -> None:
    child = start(STOPPABLE, app_config={"keepAlive": True})
    child.wait_for(Message.PING)
    child.send(Message.STOP, {"timeout": 2000, "canCallKeepalive": True})
    assert child.wait_for(Message.ALIVE) == {"keepAlive": 5000}
    time.sleep(0.3)
    assert child.proc.poll() is None
    assert Message.STOPPED not in codes(child)
    before = len(child.output.data())
    time.sleep(0.2)
    assert len(child.output.data()) > before, "the sequence keeps producing after the stop"
    child.send(Message.KILL)
    assert child.wait() == Exit.KILLED


def test_keep_alive_is_ignored_when_the_stop_does_not_allow_it(start: Start) -> None:
    child = start(STOPPABLE, app_config={"keepAlive": True})
    child.wait_for(Message.PING)
    child.send(Message.STOP, {"timeout": 2000, "canCallKeepalive": False})
    child.wait_for(Message.STOPPED)
    assert child.wait() == Exit.STOPPED


def test_a_failing_stop_handler_is_logged_and_the_stop_goes_on(start: Start) -> None:
    child = start(
        "module.exports = function () {"
        " this.addStopHandler(() => { throw new Error('handler broke'); });"
        " return new Promise(() => {}); };"
    )
    child.wait_for(Message.PING)
    child.send(Message.STOP, {"timeout": 1000, "canCallKeepalive": True})
    child.wait_for(Message.STOPPED)
    assert child.wait() == Exit.STOPPED
    assert any(e["msg"] == "Stop handler failed" for e in child.log_entries())


def test_kill_runs_kill_handlers_and_exits_137_at_once(start: Start) -> None:
    child = start(STOPPABLE)
    child.wait_for(Message.PING)
    sent = time.monotonic()
    child.send(Message.KILL)
    assert child.wait() == Exit.KILLED
    assert time.monotonic() - sent < 2
    assert (child.package_dir / "killed.txt").read_text() == "yes"


def test_closing_the_control_socket_kills_the_instance(start: Start) -> None:
    child = start("module.exports = () => new Promise(() => {});")
    child.wait_for(Message.PING)
    child.close_control()
    assert child.wait() == Exit.KILLED


def test_end_completes_the_instance_early(start: Start) -> None:
    child = start(
        "module.exports = function () { setTimeout(() => this.end(), 50);"
        " return (async function* () { yield 'a'; await new Promise(() => {}); })(); };"
    )
    code, output = run_to_end(child, close_input=False)
    assert (code, output) == (0, b"a")
    assert codes(child) == [Message.PING, Message.COMPLETED]


def test_slow_producer_items_show_up_before_the_end(start: Start) -> None:
    child = start(
        "module.exports = async function* () {"
        " yield 'first\\n'; await new Promise(r => setTimeout(r, 1500)); yield 'second\\n'; };"
    )
    child.wait_for(Message.PING)
    deadline = time.monotonic() + 1
    while child.output.data() != b"first\n" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.output.data() == b"first\n"
    assert child.proc.poll() is None
    assert run_to_end(child) == (0, b"first\nsecond\n")


# -- exit codes for failures ----------------------------------------------------------------


def test_missing_main_exits_21(start: Start) -> None:
    child = start("module.exports = () => 1;", spec={"main": "nope.js"})
    code = child.wait()
    assert code == Exit.BAD_MAIN
    assert b"nope.js" in child.stderr.data()
    assert Message.PING not in codes(child)


def test_main_outside_the_package_exits_21(start: Start) -> None:
    child = start("module.exports = () => 1;", spec={"main": "../../etc/passwd"})
    assert child.wait() == Exit.BAD_MAIN


def test_exports_that_are_not_a_function_exit_21(start: Start) -> None:
    child = start("module.exports = { run: 'nothing to call' };")
    assert child.wait() == Exit.BAD_MAIN


def test_syntax_error_at_load_exits_22_with_the_error_on_stderr(start: Start) -> None:
    child = start("module.exports = function ( {")
    assert child.wait() == Exit.FAILED_ON_START
    assert b"SyntaxError" in child.stderr.data()
    assert Message.PING not in codes(child)


def test_throw_at_load_exits_22_with_the_stack_on_stderr(start: Start) -> None:
    child = start("throw new Error('cannot load');")
    assert child.wait() == Exit.FAILED_ON_START
    stderr = child.stderr.data()
    assert b"Error: cannot load" in stderr
    assert b"index.js:1" in stderr


def test_missing_dependency_exits_22(start: Start) -> None:
    child = start("require('not-installed'); module.exports = () => 1;")
    assert child.wait() == Exit.FAILED_ON_START
    assert b"not-installed" in child.stderr.data()


def test_throw_while_running_exits_23_with_the_stack_on_stderr(start: Start) -> None:
    child = start(
        "module.exports = async function* () { yield 'before\\n';"
        " throw new Error('broken generator'); };"
    )
    code, output = run_to_end(child)
    assert code == Exit.FAILED_WHILE_RUNNING
    assert output == b"before\n"
    assert b"Error: broken generator" in child.stderr.data()
    assert Message.COMPLETED not in codes(child)


def test_throw_from_a_timer_while_running_exits_23(start: Start) -> None:
    child = start(
        "module.exports = () => { setTimeout(() => { throw new Error('late'); }, 20);"
        " return new Promise(() => {}); };"
    )
    assert child.wait() == Exit.FAILED_WHILE_RUNNING
    assert b"Error: late" in child.stderr.data()


def test_unhandled_rejection_exits_23(start: Start) -> None:
    child = start(
        "module.exports = () => { Promise.reject(new Error('nobody awaits me'));"
        " return new Promise(() => {}); };"
    )
    assert child.wait() == Exit.FAILED_WHILE_RUNNING
    assert b"nobody awaits me" in child.stderr.data()


def test_destroy_fails_the_instance_with_23(start: Start) -> None:
    child = start(
        "module.exports = function () { this.destroy(new Error('given up')); "
        "return new Promise(() => {}); };"
    )
    assert child.wait() == Exit.FAILED_WHILE_RUNNING
    assert b"given up" in child.stderr.data()


def test_the_launch_spec_is_not_left_in_the_sequence_environment(start: Start) -> None:
    child = start("module.exports = () => String(process.env.HUB_LAUNCH);")
    assert run_to_end(child) == (0, b"undefined")


def test_input_that_ends_inside_the_header_is_read_as_text(start: Start) -> None:
    child = start(ECHO_INPUT)
    child.write_input(b"no header here")
    code, output = run_to_end(child)
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [["string", "no header here"]]


def test_an_event_callback_that_throws_exits_23(start: Start) -> None:
    child = start(
        "module.exports = function () {"
        " this.on('bad', () => { throw new Error('callback broke'); });"
        " return new Promise(() => {}); };"
    )
    child.wait_for(Message.PING)
    child.send(Message.EVENT, {"eventName": "bad", "message": None})
    assert child.wait() == Exit.FAILED_WHILE_RUNNING
    assert b"callback broke" in child.stderr.data()


def test_exit_timeout_set_by_the_sequence_delays_the_completion(start: Start) -> None:
    child = start("module.exports = function () { this.exitTimeout = 400; return 'x'; };")
    child.wait_for(Message.PING)
    began = time.monotonic()
    assert run_to_end(child) == (0, b"x")
    assert time.monotonic() - began >= 0.4


def test_missing_launch_spec_exits_20() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HUB_LAUNCH"}
    done = subprocess.run([NODE, str(RUNTIME)], env=env, capture_output=True, timeout=20)
    assert done.returncode == Exit.LAUNCH_FAILED
    assert b"HUB_LAUNCH" in done.stderr


# -- volume ---------------------------------------------------------------------------------


def test_million_items_stream_fast_and_complete(start: Start) -> None:
    child = start(
        "module.exports = async function* (input, n) { for (let i = 0; i < n; i++) yield i; };",
        args=[1_000_000],
    )
    child.wait_for(Message.PING)
    began = time.monotonic()
    code = child.wait(timeout=60)
    elapsed = time.monotonic() - began
    lines = child.output.data().splitlines()
    assert code == 0
    assert len(lines) == 1_000_000
    assert lines[0] == b"0"
    assert lines[-1] == b"999999"
    # Measured at over 2 M items/s on a 2 vCPU box; 200 k/s leaves room for slow CI machines.
    assert 1_000_000 / elapsed > 200_000, f"{1_000_000 / elapsed:.0f} items/s"


def test_a_slow_output_reader_pauses_the_sequence(start: Start) -> None:
    child = start(
        "const fs = require('fs');"
        "module.exports = async function* () { const line = 'y'.repeat(1023) + '\\n';"
        " for (let i = 1; i <= 20000; i++) {"
        "   if (i % 10 === 0) fs.writeFileSync('produced', String(i));"
        "   yield line; } };",
        read_output=False,
    )
    child.wait_for(Message.PING)
    time.sleep(1)
    produced = int((child.package_dir / "produced").read_text())
    # the pipe (64 KiB) and one coalesced chunk (64 KiB) hold about 130 lines of 1 KiB
    assert produced < 1000
    child.start_output()
    assert child.wait() == 0
    assert len(child.output.data()) == 20000 * 1024


def test_console_output_written_just_before_the_end_is_not_lost(start: Start) -> None:
    child = start(
        "module.exports = () => { const line = 'x'.repeat(1023);"
        " for (let i = 0; i < 4096; i++) console.log(line);"
        " console.error('last words'); };"
    )
    code, _ = run_to_end(child)
    assert code == 0
    assert len(child.stdout.data()) == 4096 * 1024
    assert child.stderr.data() == b"last words\n"


# -- through the real fork server -----------------------------------------------------------


async def test_fork_server_execs_the_node_runtime_on_its_descriptors(tmp_path: Path) -> None:
    from tests.runner.harness import Harness, make_spec, started_fork_server, write_package

    package_dir = write_package(tmp_path, DOCS_EXAMPLE, main="index.js")
    spec = make_spec(package_dir, main="index.js", args=[3000, 3])
    async with started_fork_server() as server:
        harness = Harness(server)
        try:
            child = await harness.start_exec([NODE, str(RUNTIME)], spec)
            await child.end_input()
            assert await child.wait_exit() == 0
            assert child.output == b"3000\n3001\n3002\n"
            assert child.codes() == [Message.PING, Message.COMPLETED]
        finally:
            harness.close()


async def test_fork_server_stop_reaches_the_node_stop_handlers(tmp_path: Path) -> None:
    from tests.runner.harness import Harness, make_spec, started_fork_server, write_package

    package_dir = write_package(tmp_path, STOPPABLE, main="index.js")
    spec = make_spec(package_dir, main="index.js")
    async with started_fork_server() as server:
        harness = Harness(server)
        try:
            child = await harness.start_exec([NODE, str(RUNTIME)], spec)
            await child.wait_message(Message.PING)
            child.send(Message.STOP, {"timeout": 1000, "canCallKeepalive": False})
            assert await child.wait_exit() == Exit.STOPPED
            assert Message.STOPPED in child.codes()
        finally:
            harness.close()


async def test_node_starts_under_a_512_mb_memory_limit(tmp_path: Path) -> None:
    """The limit becomes Node's heap size, not an address-space rlimit V8 cannot start under."""
    from runner.launch import node_argv, node_limits
    from tests.runner.harness import Harness, make_spec, started_fork_server, write_package

    package_dir = write_package(tmp_path, "module.exports = () => 'ok';", main="index.js")
    limits = node_limits({"memory": 512, "nofile": 1024})
    spec = make_spec(package_dir, main="index.js", limits=limits)
    async with started_fork_server() as server:
        harness = Harness(server)
        try:
            child = await harness.start_exec(node_argv(NODE, limits), spec)
            await child.end_input()
            assert await child.wait_exit() == 0
        finally:
            harness.close()
