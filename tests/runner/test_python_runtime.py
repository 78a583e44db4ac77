"""The Python child runtime (runner/python_runtime.py), forked by a real fork server.

Each test writes a package in a tmp dir, starts it through the harness (which plays the
supervisor), and checks the streams, control messages and exit code of runner/PROTOCOL.md.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from core.protocol import Exit, Message
from runner.forkserver import REPO_ROOT, ForkServer
from runner.lent import lent_library
from tests.runner.harness import Child, Harness, make_spec, started_fork_server, write_package

pytestmark = pytest.mark.asyncio(loop_scope="module")


Start = Callable[..., Awaitable[Child]]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[ForkServer]:
    async with started_fork_server() as fork_server:
        yield fork_server


@pytest_asyncio.fixture(loop_scope="module")
async def harness(server: ForkServer) -> AsyncIterator[Harness]:
    test_harness = Harness(server)
    yield test_harness
    test_harness.close()


@pytest.fixture
def start(harness: Harness, tmp_path: Path) -> Start:
    """start(source, files=..., main=..., **spec) -> a running Child."""

    async def start_child(
        source: str, *, files: dict[str, str] | None = None, main: str = "main.py", **spec: Any
    ) -> Child:
        package_dir = write_package(tmp_path, textwrap.dedent(source), main=main, files=files)
        return await harness.start(make_spec(package_dir, main=main, **spec))

    return start_child


async def finished(child: Child) -> int:
    """Closes input, waits for the exit, returns the code."""
    await child.end_input()
    return await child.wait_exit()


# ---------------------------------------------------------------------------------------------
# Shapes of run and of its result
# ---------------------------------------------------------------------------------------------


async def test_function_returning_str_is_written_as_is(start: Start) -> None:
    child = await start("def run(context, input):\n    return 'no newline added'\n")
    assert await finished(child) == 0
    assert child.output == b"no newline added"
    assert child.codes() == [Message.PING, Message.COMPLETED]


async def test_function_returning_list_writes_each_item_by_type(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            return ["text\\n", b"raw\\n", {"a": 1}, None, 5, [1, 2], True]
        """
    )
    assert await finished(child) == 0
    assert child.output == b'text\nraw\n{"a": 1}\n5\n[1, 2]\ntrue\n'


async def test_function_returning_none_completes_without_output(start: Start) -> None:
    child = await start("def run(context, input):\n    return None\n")
    assert await finished(child) == 0
    assert child.output == b""
    assert child.data_of(Message.COMPLETED) == [{}]


async def test_function_returning_dict_is_one_json_line(start: Start) -> None:
    child = await start("def run(context, input):\n    return {'x': [1, 'é']}\n")
    assert await finished(child) == 0
    assert json.loads(child.output) == {"x": [1, "é"]}
    assert child.output.endswith(b"\n")


async def test_coroutine_result_is_awaited(start: Start) -> None:
    child = await start(
        """
        import asyncio

        async def run(context, input):
            await asyncio.sleep(0.01)
            return ["a\\n", "b\\n"]
        """
    )
    assert await finished(child) == 0
    assert child.output == b"a\nb\n"


async def test_generator_items_are_streamed(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            for i in range(3):
                yield f"line {i}\\n"
        """
    )
    assert await finished(child) == 0
    assert child.output == b"line 0\nline 1\nline 2\n"


async def test_async_generator_items_are_streamed(start: Start) -> None:
    child = await start(
        """
        import asyncio

        async def run(context, input):
            for i in range(3):
                await asyncio.sleep(0)
                yield {"i": i}
        """
    )
    assert await finished(child) == 0
    assert [json.loads(line) for line in child.output.splitlines()] == [{"i": i} for i in range(3)]


async def test_returned_async_iterable_and_coroutine_of_one(start: Start) -> None:
    child = await start(
        """
        class Countdown:
            def __init__(self, n):
                self.n = n

            def __aiter__(self):
                return self

            async def __anext__(self):
                if self.n == 0:
                    raise StopAsyncIteration
                self.n -= 1
                return f"{self.n}\\n"

        async def run(context, input):
            return Countdown(3)
        """
    )
    assert await finished(child) == 0
    assert child.output == b"2\n1\n0\n"


async def test_args_are_spread_with_their_json_types(start: Start) -> None:
    child = await start(
        """
        def run(context, input, *args):
            return [[type(a).__name__ for a in args], list(args)]
        """,
        args=[3000, "10", 1.5, None, {"a": 1}],
    )
    assert await finished(child) == 0
    types, values = (json.loads(line) for line in child.output.splitlines())
    assert types == ["int", "str", "float", "NoneType", "dict"]
    assert values == [3000, "10", 1.5, None, {"a": 1}]


async def test_scramjet_lifecycle_example_counts_from_initial_number(start: Start) -> None:
    child = await start(
        """
        import asyncio

        async def run(context, input, initialNumber=0, length=1000):
            for i in range(initialNumber, initialNumber + length):
                await asyncio.sleep(0)
                yield i
        """,
        args=[3000, 10],
    )
    assert await finished(child) == 0
    assert child.output.decode().splitlines() == [str(n) for n in range(3000, 3010)]


async def test_app_config_and_instance_id_reach_the_context(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            return {"config": context.config, "id": context.instance_id}
        """,
        app_config={"mode": "fast"},
        instance_id="inst-1",
    )
    assert await finished(child) == 0
    assert json.loads(child.output) == {"config": {"mode": "fast"}, "id": "inst-1"}


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


async def test_stdout_output_log_and_stderr_stay_separate(start: Start) -> None:
    child = await start(
        """
        import sys

        def run(context, input):
            print("to stdout")
            sys.stdout.buffer.write(b"raw stdout\\n")
            print("to stderr", file=sys.stderr)
            context.logger.warning("to log", extra={"data": {"k": 1}})
            context.logger.getChild("mount").info("from a part")
            return "to output\\n"
        """
    )
    assert await finished(child) == 0
    assert child.stdout == b"to stdout\nraw stdout\n"
    assert child.stderr == b"to stderr\n"
    assert child.output == b"to output\n"
    entry, part = child.log_entries()
    assert entry["level"] == "WARNING" and entry["msg"] == "to log"
    assert entry["data"] == {"k": 1} and isinstance(entry["ts"], int)
    assert "from" not in entry  # the context logger itself: no name to show
    # A child logger's lines say which part of the sequence wrote them (the console's column).
    assert part["from"] == "mount" and part["msg"] == "from a part"


async def test_stdin_reaches_sys_stdin_and_log_records_carry_exceptions(start: Start) -> None:
    child = await start(
        """
        import sys

        def run(context, input):
            try:
                1 / 0
            except ZeroDivisionError:
                context.logger.exception("division failed")
            return sys.stdin.read().upper()
        """
    )
    await child.write_stdin("from stdin\n")
    await child.end_stdin()
    assert await finished(child) == 0
    assert child.output == b"FROM STDIN\n"
    [entry] = child.log_entries()
    assert entry["level"] == "ERROR" and entry["msg"] == "division failed"
    assert "ZeroDivisionError" in entry["exc"]


async def test_stdin_is_a_stream_as_on_sth_without_blocking_the_loop(start: Start) -> None:
    """STH's sys.stdin is a scramjet stream: `await sys.stdin.read()` gives the next chunk as
    it comes (stdin still open, the loop still running), `async for` the rest, None the end."""
    child = await start(
        """
        import asyncio, sys

        async def run(context, input):
            async def tick():
                while True:
                    context.emit("tick")
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            name = (await sys.stdin.read()).strip()
            context.emit("name", name)
            rest = [chunk async for chunk in sys.stdin]
            ticker.cancel()
            return {"name": name, "rest": rest, "end": await sys.stdin.read()}
        """
    )
    await child.wait_message(Message.EVENT)  # ticking: the loop runs while stdin is awaited
    await child.write_stdin("Alice\n")
    await child.wait_until(
        lambda: {"eventName": "name", "message": "Alice"} in child.data_of(Message.EVENT),
        10,
        "the name, read while stdin stays open",
    )
    await child.write_stdin("b\nc")
    await child.end_stdin()
    assert await finished(child) == 0, child.stderr
    assert json.loads(child.output) == {"name": "Alice", "rest": ["b\n", "c"], "end": None}


async def test_stdin_keeps_the_file_methods(start: Start) -> None:
    child = await start(
        """
        import builtins, sys

        def run(context, input):
            first = sys.stdin.readline()
            second = builtins.input()
            three = sys.stdin.read(3)
            rest = list(sys.stdin)
            return {"first": first, "second": second, "three": three, "rest": rest,
                    "end": sys.stdin.read(), "fileno": sys.stdin.fileno()}
        """
    )
    await child.write_stdin("one\ntwo\nthree\nfour\nfive")
    await child.end_stdin()
    assert await finished(child) == 0, child.stderr
    assert json.loads(child.output) == {
        "first": "one\n",
        "second": "two",
        "three": "thr",
        "rest": ["ee\n", "four\n", "five"],
        "end": "",
        "fileno": 0,
    }


async def test_print_appears_promptly_while_the_loop_is_blocked(start: Start) -> None:
    child = await start(
        """
        import time

        def run(context, input):
            print("started")
            time.sleep(30)
        """
    )
    await child.wait_stream("stdout", b"started\n", timeout=3)
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_output_of_a_slow_producer_appears_at_once(start: Start) -> None:
    child = await start(
        """
        import asyncio, time

        async def run(context, input):
            yield "first\\n"
            await asyncio.sleep(30)

        """
    )
    await child.wait_stream("output", b"first\n", timeout=3)
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_output_of_a_blocking_sync_generator_appears_at_once(start: Start) -> None:
    child = await start(
        """
        import time

        def run(context, input):
            yield "first\\n"
            time.sleep(30)
            yield "never\\n"
        """
    )
    await child.wait_stream("output", b"first\n", timeout=3)
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_many_items_arrive_in_order_with_one_write_syscall_per_batch(start: Start) -> None:
    child = await start(
        """
        import sys

        def run(context, input):
            for i in range(200_000):
                yield f"{i}\\n"
            sys.stdin.readline()  # hold on, so the test can read this process's counters
        """
    )
    expected = b"".join(b"%d\n" % i for i in range(200_000))
    await child.wait_until(lambda: len(child.streams["output"]) >= len(expected), 20, "all lines")
    writes = _write_syscalls(child.pid)
    await child.end_stdin()
    assert await finished(child) == 0
    assert child.output == expected
    # ~20 batches of 64 KiB, plus a flush per 20 ms the producer takes: far from one per item.
    assert writes < 1_000, f"{writes} write syscalls for 200,000 items"


async def test_many_prints_do_not_make_a_syscall_each(start: Start) -> None:
    child = await start(
        """
        import sys

        def run(context, input):
            for i in range(200_000):
                print(i)
            sys.stdin.readline()
        """
    )
    expected = b"".join(b"%d\n" % i for i in range(200_000))
    await child.wait_until(lambda: len(child.streams["stdout"]) >= len(expected), 20, "all prints")
    writes = _write_syscalls(child.pid)
    await child.end_stdin()
    assert await finished(child) == 0
    assert child.stdout == expected
    assert writes < 1_000, f"{writes} write syscalls for 200,000 prints"


async def test_non_utf8_bytes_and_a_one_megabyte_line_pass_unchanged(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            yield b"\\xff\\xfe\\x00raw\\n"
            yield "x" * (1 << 20) + "\\n"
            yield "caf\\udce9\\n"  # surrogateescape for the byte 0xe9
        """
    )
    assert await finished(child) == 0
    assert child.output == b"\xff\xfe\x00raw\n" + b"x" * (1 << 20) + b"\n" + b"caf\xe9\n"


async def test_text_input_gives_lines_with_their_newline(start: Start) -> None:
    child = await start(
        """
        async def run(context, input):
            async for line in input:
                yield repr(line) + "\\n"
        """
    )
    await child.write_input("alpha\nbe", "text/plain")
    await child.write_input("ta\ngamma")
    assert await finished(child) == 0
    assert child.output.decode().splitlines() == ["'alpha\\n'", "'beta\\n'", "'gamma'"]


async def test_text_input_keeps_non_utf8_bytes_round_trip(start: Start) -> None:
    child = await start(
        """
        async def run(context, input):
            async for line in input:
                yield line
        """
    )
    await child.write_input(b"caf\xe9\n\xff\n", "text/plain")
    assert await finished(child) == 0
    assert child.output == b"caf\xe9\n\xff\n"


async def test_octet_stream_input_gives_bytes_chunks(start: Start) -> None:
    child = await start(
        """
        async def run(context, input):
            chunks = [chunk async for chunk in input]
            assert all(type(chunk) is bytes for chunk in chunks)
            return b"".join(chunks)
        """
    )
    payload = bytes(range(256)) * 1000
    await child.write_input(payload, "application/octet-stream")
    assert await finished(child) == 0
    assert child.output == payload


async def test_ndjson_input_gives_parsed_values(start: Start) -> None:
    child = await start(
        """
        async def run(context, input):
            async for value in input:
                yield {"got": value}
        """
    )
    await child.write_input(b'{"a": 1}\n[2]\n\n"three"\n4', "application/x-ndjson")
    assert await finished(child) == 0
    got = [json.loads(line)["got"] for line in child.output.splitlines()]
    assert got == [{"a": 1}, [2], "three", 4]


async def test_input_without_any_request_ends_empty(start: Start) -> None:
    child = await start(
        """
        async def run(context, input):
            return [repr([item async for item in input]) + "\\n"]
        """
    )
    assert await finished(child) == 0
    assert child.output == b"[]\n"


# ---------------------------------------------------------------------------------------------
# Events, stop, kill, health
# ---------------------------------------------------------------------------------------------


async def test_events_go_out_and_come_in_to_sync_and_async_callbacks(start: Start) -> None:
    child = await start(
        """
        import asyncio

        async def run(context, input):
            done = asyncio.Event()

            def sync_callback(message):
                context.emit("echo", {"sync": message})

            async def async_callback(message):
                await asyncio.sleep(0)
                context.emit("echo", {"async": message})
                done.set()

            context.on("ping", sync_callback)
            context.on("ping", async_callback)
            context.emit("ready")
            await done.wait()
        """
    )
    assert await child.wait_message(Message.EVENT) == {"eventName": "ready", "message": ""}
    child.send(Message.EVENT, {"eventName": "ping", "message": [1, "x"]})
    assert await finished(child) == 0
    echoes = [
        data["message"] for data in child.data_of(Message.EVENT) if data["eventName"] == "echo"
    ]
    assert echoes == [{"sync": [1, "x"]}, {"async": [1, "x"]}]


STOPPABLE = """
import asyncio

async def run(context, input):
    async def on_stop(timeout, can_keep_alive):
        print("stop handler", timeout, can_keep_alive, flush=True)
        if context.config.get("keep"):
            await context.keep_alive(5)

    context.set_stop_handler(on_stop)
    context.set_stop_handler(lambda timeout, can: print("second handler", flush=True))
    context.emit("ready")
    await asyncio.sleep(3600)
"""


async def test_stop_runs_stop_handlers_then_exits_138(start: Start) -> None:
    child = await start(STOPPABLE)
    await child.wait_message(Message.EVENT)
    child.send(Message.STOP, {"timeout": 2500, "canCallKeepalive": False})
    assert await child.wait_exit() == Exit.STOPPED
    assert child.stdout == b"stop handler 2.5 False\nsecond handler\n"
    assert child.codes()[-1] == Message.STOPPED


async def test_stop_with_keep_alive_keeps_the_instance_running(start: Start) -> None:
    child = await start(STOPPABLE, app_config={"keep": True})
    await child.wait_message(Message.EVENT)
    child.send(Message.STOP, {"timeout": 1000, "canCallKeepalive": True})
    assert await child.wait_message(Message.ALIVE) == {"keepAlive": 5000}
    await child.wait_stream("stdout", b"second handler\n")
    child.send(Message.HEALTH_CHECK, {})
    # Still alive and answering.
    assert await child.wait_message(Message.HEALTH) == {"healthy": True}
    assert child.exit_code is None and Message.STOPPED not in child.codes()
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_keep_alive_is_refused_when_the_stop_does_not_allow_it(start: Start) -> None:
    child = await start(STOPPABLE, app_config={"keep": True})
    await child.wait_message(Message.EVENT)
    child.send(Message.STOP, {"timeout": 1000, "canCallKeepalive": False})
    assert await child.wait_exit() == Exit.STOPPED


async def test_stop_handlers_get_as_many_arguments_as_they_take(start: Start) -> None:
    """STH samples write stop handlers with no parameters, one, both, or *args: all run."""
    child = await start(
        """
        import asyncio, functools

        async def run(context, input):
            def none():
                print("none", flush=True)

            async def one(timeout):
                print("one", timeout, flush=True)

            def defaults(timeout, can_keep_alive=None, extra="kept"):
                print("defaults", timeout, can_keep_alive, extra, flush=True)

            def star(*args):
                print("star", *args, flush=True)

            class Cleaner:
                def close(self, timeout, can):
                    print("method", timeout, can, flush=True)

            for handler in (none, one, defaults, star, Cleaner().close,
                            functools.partial(star, "p")):
                context.set_stop_handler(handler)
            context.emit("ready")
            await asyncio.sleep(3600)
        """
    )
    await child.wait_message(Message.EVENT)
    child.send(Message.STOP, {"timeout": 1500, "canCallKeepalive": True})
    assert await child.wait_exit() == Exit.STOPPED, child.stderr
    assert child.stderr == b""
    assert child.stdout.decode().splitlines() == [
        "none",
        "one 1.5",
        "defaults 1.5 True kept",
        "star 1.5 True",
        "method 1.5 True",
        "star p 1.5 True",
    ]


async def test_kill_exits_137_even_when_user_code_blocks_the_loop(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            print("spinning", flush=True)
            while True:
                pass
        """
    )
    await child.wait_stream("stdout", b"spinning")
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_health_check_defaults_to_healthy(start: Start) -> None:
    child = await start(
        "import asyncio\nasync def run(context, input):\n    await asyncio.sleep(60)\n"
    )
    child.send(Message.HEALTH_CHECK, {})
    assert await child.wait_message(Message.HEALTH) == {"healthy": True}
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_health_check_reports_what_the_sequence_says(start: Start) -> None:
    child = await start(
        """
        import asyncio

        async def run(context, input):
            async def check():
                return {"healthy": False, "reason": "queue full"}

            context.set_health_check(check)
            context.emit("ready")
            await asyncio.sleep(60)
        """
    )
    await child.wait_message(Message.EVENT)
    child.send(Message.HEALTH_CHECK, {})
    assert await child.wait_message(Message.HEALTH) == {"healthy": False, "reason": "queue full"}
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED


async def test_sys_exit_in_run_ends_with_that_code(start: Start) -> None:
    child = await start("import sys\ndef run(context, input):\n    sys.exit(3)\n")
    assert await finished(child) == 3
    assert Message.COMPLETED not in child.codes()


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


async def test_missing_or_escaping_main_or_a_folder_exits_21(
    harness: Harness, tmp_path: Path
) -> None:
    package_dir = write_package(tmp_path, "def run(context, input): pass\n")
    (package_dir / "src").mkdir()
    for main in ("missing.py", "src", "../outside.py"):
        child = await harness.start(make_spec(package_dir, main=main))
        assert await finished(child) == Exit.BAD_MAIN, main
        assert b"Bad main" in child.stderr
        assert Message.PING not in child.codes()


async def test_main_without_run_exits_21(start: Start) -> None:
    child = await start("def not_run(context, input):\n    pass\n")
    assert await finished(child) == Exit.BAD_MAIN
    assert b"defines no run" in child.stderr


async def test_syntax_error_exits_22_with_the_error_on_stderr(start: Start) -> None:
    child = await start("def run(context, input)\n    return 1\n")
    assert await finished(child) == Exit.FAILED_ON_START
    assert b"SyntaxError" in child.stderr and b"main.py" in child.stderr
    assert Message.PING not in child.codes()


async def test_import_error_exits_22_with_traceback(start: Start) -> None:
    child = await start("import no_such_module_here\ndef run(context, input): pass\n")
    assert await finished(child) == Exit.FAILED_ON_START
    assert b"Traceback" in child.stderr
    assert b"ModuleNotFoundError: No module named 'no_such_module_here'" in child.stderr


async def test_exception_while_running_exits_23_with_traceback(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            yield "before\\n"
            raise ValueError("broken on purpose")
        """
    )
    assert await finished(child) == Exit.FAILED_WHILE_RUNNING
    assert child.output == b"before\n"
    assert b"Traceback" in child.stderr and b"in run" in child.stderr
    assert b"ValueError: broken on purpose" in child.stderr
    assert b"python_runtime.py" not in child.stderr  # the runtime's own frames are left out
    assert Message.COMPLETED not in child.codes()


# ---------------------------------------------------------------------------------------------
# Packages, processes, limits
# ---------------------------------------------------------------------------------------------


async def test_pypackages_and_main_in_a_subfolder_are_importable(start: Start) -> None:
    child = await start(
        """
        import vendored
        import helper

        def run(context, input):
            return [vendored.NAME, " ", helper.NAME]
        """,
        main="src/app.py",
        files={
            "__pypackages__/vendored/__init__.py": "NAME = 'vendored'\n",
            "src/helper.py": "NAME = 'helper'\n",
        },
    )
    assert await finished(child) == 0
    assert child.output == b"vendored helper"


async def test_runtime_also_runs_as_an_execd_module(harness: Harness, tmp_path: Path) -> None:
    package_dir = write_package(tmp_path, "def run(context, input, n):\n    return [n, n + 1]\n")
    spec = make_spec(package_dir, args=[41], env={"PYTHONPATH": REPO_ROOT, "PATH": os.defpath})
    child = await harness.start_exec([sys.executable, "-m", "runner.python_runtime"], spec)
    assert await finished(child) == 0, child.stderr
    assert child.output == b"41\n42\n"
    assert child.codes() == [Message.PING, Message.COMPLETED]


async def test_hub_packages_are_not_importable_by_sequences(start: Start) -> None:
    child = await start(
        """
        import importlib.util

        def run(context, input):
            return {name: importlib.util.find_spec(name) is not None for name in ("django", "json")}
        """
    )
    assert await finished(child) == 0
    assert json.loads(child.output) == {"django": False, "json": True}


@pytest.fixture(scope="module")
def lent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library the worker lends Python sequences (runner/lent.py), made as a worker does."""
    library = lent_library(tmp_path_factory.mktemp("data") / "lib")
    assert library is not None
    return library


async def test_input_is_a_scramjet_stream_lent_by_the_hub(start: Start, lent: Path) -> None:
    """As on STH, whether or not the package ships scramjet."""
    child = await start(
        """
        def run(context, input):
            return input.map(lambda line: f"consumer got: {line}").each(print)
        """,
        python_path=[str(lent)],
    )
    await child.write_input("a\nb\n")
    assert await finished(child) == 0, child.stderr
    assert child.output == b"consumer got: a\nconsumer got: b\n"
    assert child.stdout == b"consumer got: a\n\nconsumer got: b\n\n"


async def test_a_returned_scramjet_stream_ends_cleanly_without_a_word_on_stderr(
    start: Start, lent: Path
) -> None:
    """A `run` returning a Stream and never reading its input: the task in which scramjet
    reads that input stays referenced, not destroyed by the collector with a message."""
    sources = (
        """
        from scramjet.streams import Stream

        def run(context, input):
            return Stream.read_from(["a\\n", "b\\n"])
        """,
        """
        from scramjet.streams import Stream

        async def run(context, input):
            return Stream.read_from(["a\\n", "b\\n"])
        """,
        # Whether the message shows depends on when the collector runs: here it surely does,
        # after `run` returned and dropped its input.
        """
        import gc
        from scramjet.streams import Stream

        def lines():
            gc.collect()
            yield from ["a\\n", "b\\n"]

        def run(context, input):
            return Stream.read_from(lines())
        """,
    )
    for source in sources:
        child = await start(source, python_path=[str(lent)])
        assert await finished(child) == 0, child.stderr
        assert child.output == b"a\nb\n"
        assert child.stderr == b""
        assert child.codes() == [Message.PING, Message.COMPLETED]


async def test_a_package_shipping_its_own_scramjet_gets_its_own(start: Start, lent: Path) -> None:
    own = """
        class Stream:
            @classmethod
            def read_from(cls, source):
                return "the package's own scramjet"
        """
    child = await start(
        """
        def run(context, input):
            return input
        """,
        files={
            "__pypackages__/scramjet/__init__.py": "",
            "__pypackages__/scramjet/streams.py": textwrap.dedent(own),
        },
        python_path=[str(lent)],
    )
    assert await finished(child) == 0, child.stderr
    assert child.output == b"the package's own scramjet"


def test_the_lent_library_holds_only_scramjet_readable_by_all_and_is_made_once(
    lent: Path,
) -> None:
    assert [p.name for p in lent.iterdir()] == ["scramjet"]
    assert (
        lent.name == f"scramjet-framework-py-{importlib.metadata.version('scramjet-framework-py')}"
    )
    for path in [lent, *lent.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), path
    assert list(lent.rglob("*.pyc"))  # compiled once here: children cannot write bytecode
    made = (lent / "scramjet/streams.py").stat().st_mtime_ns
    assert lent_library(lent.parent) == lent
    assert (lent / "scramjet/streams.py").stat().st_mtime_ns == made


async def test_grandchildren_share_the_process_group_and_die_with_killpg(start: Start) -> None:
    child = await start(
        """
        import asyncio, subprocess

        async def run(context, input):
            sleeper = subprocess.Popen(["sleep", "60"])
            context.emit("grandchild", sleeper.pid)
            await asyncio.sleep(60)
        """
    )
    event = await child.wait_message(Message.EVENT)
    grandchild = event["message"]
    assert os.getpgid(grandchild) == child.pid == os.getsid(child.pid)
    os.killpg(child.pid, signal.SIGKILL)
    assert await child.wait_exit() == Exit.KILLED
    await child.wait_until(lambda: not _alive(grandchild), 5, "the grandchild to die")


async def test_allocating_beyond_the_memory_limit_fails(start: Start) -> None:
    child = await start(
        """
        def run(context, input):
            hog = bytearray(512 * 1024 * 1024)
            return "allocated\\n"
        """,
        limits={"memory": 256, "nofile": 64},
    )
    code = await finished(child)
    assert code != 0 and child.output == b""
    assert b"MemoryError" in child.stderr


async def test_workdir_and_environment_come_from_the_spec(start: Start, tmp_path: Path) -> None:
    """The workdir is made (HOME and TMPDIR name it); the sequence works in main's folder, as
    on STH, so the files beside main open by relative paths."""
    child = await start(
        """
        import os, resource

        def run(context, input):
            with open("data.txt") as f:
                data = f.read()
            return {
                "cwd": os.getcwd(),
                "data": data,
                "env": dict(os.environ),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            }
        """,
        main="app/main.py",
        files={"app/data.txt": "beside main"},
        workdir=tmp_path / "deep/work",
        env={"ONLY": "this"},
        limits={"nofile": 100},
    )
    assert await finished(child) == 0, child.stderr
    seen = json.loads(child.output)
    assert seen == {
        "cwd": str(tmp_path / "pkg/app"),
        "data": "beside main",
        "env": {"ONLY": "this"},
        "nofile": 100,
    }
    assert (tmp_path / "deep/work").is_dir()


# ---------------------------------------------------------------------------------------------
# Script mode
# ---------------------------------------------------------------------------------------------

SCRIPT = """
import asyncio

def script(sequencer):
    @sequencer.on_setup("move")
    async def move(step):
        await asyncio.sleep(0)
        print("move", step.id, step.type, step.command, step.params["to"])

    @sequencer.on_observe("expose")
    def expose(step):
        raise RuntimeError("shutter stuck")

    @sequencer.on_observe("wait")
    async def wait(step):
        await asyncio.sleep(3600)

    @sequencer.on_go_online
    def online():
        sequencer.logger.info("online %s", sequencer.prefix)

    @sequencer.on_diagnostic_mode()
    def diagnostic(start_time, hint):
        print("diagnostic", start_time.year, hint)
"""


def _step(command: str, kind: str = "Setup", **params: Any) -> dict[str, Any]:
    return {"id": f"id-{command}", "type": kind, "command": command, "params": params}


async def test_script_registers_handlers_then_pings(start: Start) -> None:
    child = await start(SCRIPT, mode="script", prefix="ESW.darknight")
    assert await child.wait_message(Message.SCRIPT_LOADED) == {
        "setup": ["move"],
        "observe": ["expose", "wait"],
        "hooks": ["go_online", "diagnostic_mode"],
    }
    await child.wait_message(Message.PING)
    assert child.codes() == [Message.SCRIPT_LOADED, Message.PING]
    child.close_control()
    assert await child.wait_exit() == 0


async def test_script_calls_succeed_fail_and_report_missing_handlers(start: Start) -> None:
    child = await start(SCRIPT, mode="script", prefix="ESW.darknight")
    await child.wait_message(Message.PING)
    calls = [
        {"call": 1, "handler": "setup", "step": _step("move", to="M31"), "args": {}},
        {"call": 2, "handler": "observe", "step": _step("expose", "Observe"), "args": {}},
        {"call": 3, "handler": "setup", "step": _step("unknown"), "args": {}},
        {"call": 4, "handler": "go_online", "step": None, "args": {}},
        {"call": 5, "handler": "go_offline", "step": None, "args": {}},
        {
            "call": 6,
            "handler": "diagnostic_mode",
            "step": None,
            "args": {"startTime": "2026-01-02T03:04:05Z", "hint": "engineering"},
        },
    ]
    for call in calls:
        child.send(Message.CALL, call)
    await child.wait_until(
        lambda: len(child.data_of(Message.CALL_DONE)) == len(calls), 10, "replies"
    )
    # Calls run concurrently (a hook must not wait behind a step), so replies come in any order.
    assert sorted(child.data_of(Message.CALL_DONE), key=lambda d: d["call"]) == [
        {"call": 1, "ok": True, "error": None},
        {"call": 2, "ok": False, "error": "RuntimeError: shutter stuck"},
        {"call": 3, "ok": False, "error": "no handler for Setup 'unknown'"},
        {"call": 4, "ok": True, "error": None},
        {"call": 5, "ok": True, "error": None},  # not registered: succeeds
        {"call": 6, "ok": True, "error": None},
    ]
    assert sorted(child.stdout.splitlines()) == [
        b"diagnostic 2026 engineering",
        b"move id-move Setup move M31",
    ]
    assert b"RuntimeError: shutter stuck" in child.stderr
    assert [entry["msg"] for entry in child.log_entries()] == ["online ESW.darknight"]
    child.close_control()
    assert await child.wait_exit() == 0


async def test_kill_lands_while_an_async_handler_sleeps(start: Start) -> None:
    child = await start(SCRIPT, mode="script")
    await child.wait_message(Message.PING)
    child.send(Message.CALL, {"call": 1, "handler": "observe", "step": _step("wait", "Observe")})
    child.send(Message.KILL, {})
    assert await child.wait_exit() == Exit.KILLED
    assert Message.CALL_DONE not in child.codes()


async def test_script_that_raises_on_load_exits_22(start: Start) -> None:
    child = await start(
        "def script(sequencer):\n    raise RuntimeError('bad script')\n", mode="script"
    )
    assert await finished(child) == Exit.FAILED_ON_START
    assert b"RuntimeError: bad script" in child.stderr
    assert Message.PING not in child.codes() and Message.SCRIPT_LOADED not in child.codes()


async def test_module_without_script_exits_22(start: Start) -> None:
    child = await start("def run(context, input):\n    pass\n", mode="script")
    assert await finished(child) == Exit.FAILED_ON_START
    assert b"defines no script" in child.stderr


# ---------------------------------------------------------------------------------------------


def _write_syscalls(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io_file:
        fields = dict(line.split(": ") for line in io_file.read().splitlines())
    return int(fields["syscw"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
