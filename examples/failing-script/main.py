"""A script that fails on purpose, to see what the hub does with each failure.

- Setup `fail` fails (its message from params `msg`); Setup `ok` succeeds after `sleep` s;
  Setup `crash` kills the sequencer's own process (→ Killed).
- Setup `arm` with params `{"hooks": ["new_sequence", "go_offline", ...]}` makes those hooks
  fail from now on; `disarm` clears them (`{"hooks": [...]}`, or all). `diagnosticMode` with
  the hint `arm:go_online,new_sequence` or `disarm` does the same from any state.
- The abort, stop and shutdown hooks always fail: the hub ignores their failure, as ESW does.
- A prefix ending in `.failload` makes `script()` itself raise: LoadScript answers
  LoadingScriptFailed with the traceback.
"""

import asyncio
import os
import signal


class HookFailure(RuntimeError):
    pass


def script(sequencer):
    if sequencer.prefix.endswith(".failload"):
        raise RuntimeError(f"refusing to load for {sequencer.prefix} on purpose")
    armed = set()

    def check(hook):
        if hook in armed:
            raise HookFailure(f"{hook} fails on purpose")

    def change(names, arm):
        chosen = {str(n) for n in names} if names else None
        if arm:
            armed.update(chosen or ())
        elif chosen is None:
            armed.clear()
        else:
            armed.difference_update(chosen)
        print(f"armed hooks: {sorted(armed)}")

    @sequencer.on_setup("ok")
    async def ok(step):
        await asyncio.sleep(float(step.params.get("sleep", 0.05)))

    @sequencer.on_setup("fail")
    async def fail(step):
        await asyncio.sleep(float(step.params.get("sleep", 0)))
        raise RuntimeError(step.params.get("msg", "this step fails on purpose"))

    @sequencer.on_setup("crash")
    async def crash(step):
        await asyncio.sleep(float(step.params.get("sleep", 0)))
        os.kill(os.getpid(), signal.SIGKILL)

    @sequencer.on_setup("arm")
    async def arm(step):
        change(step.params.get("hooks") or [], arm=True)

    @sequencer.on_setup("disarm")
    async def disarm(step):
        change(step.params.get("hooks") or [], arm=False)

    @sequencer.on_new_sequence
    async def new_sequence():
        check("new_sequence")

    @sequencer.on_go_online
    async def go_online():
        check("go_online")

    @sequencer.on_go_offline
    async def go_offline():
        check("go_offline")

    @sequencer.on_diagnostic_mode
    async def diagnostic(start_time, hint):
        if hint.startswith("arm:"):
            change(hint[4:].split(","), arm=True)
            return
        if hint == "disarm":
            change([], arm=False)
            return
        check("diagnostic_mode")

    @sequencer.on_operations_mode
    async def operations():
        check("operations_mode")

    @sequencer.on_abort_sequence
    async def abort():
        raise HookFailure("abort handler fails on purpose")

    @sequencer.on_stop
    async def stop():
        raise HookFailure("stop handler fails on purpose")

    @sequencer.on_shutdown
    async def shutdown():
        raise HookFailure("shutdown handler fails on purpose")
