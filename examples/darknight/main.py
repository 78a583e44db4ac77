"""The darknight example script: load it into a sequence component, then submit steps.

    si seq pack examples/darknight -o darknight.tar.gz && si seq send darknight.tar.gz
    POST /api/v1/component/ESW.primary/load-script {"sequence": "<id>", "prefix": "ESW.darknight"}
    POST /api/v1/sequencer/ESW.darknight/submit {"commands": [
        {"type": "Setup", "command": "slew", "params": {"ra": "10:00:00", "dec": "+20:00:00"}},
        {"type": "Setup", "command": "configure", "params": {"filter": "H"}},
        {"type": "Observe", "command": "expose", "params": {"exposure": 1.5}},
        {"type": "Observe", "command": "readout"}]}

Every step prints to stdout and logs to the log stream. How long a step takes comes from its
params (`sleep` for any step, `exposure` for expose), so tests and demos can run it fast.
"""

import asyncio


def script(sequencer):
    log = sequencer.logger
    night = {"mode": "operations", "exposures": 0}

    async def take(step, default):
        seconds = float(step.params.get("sleep", default))
        if seconds > 0:
            await asyncio.sleep(seconds)

    @sequencer.on_setup("slew")
    async def slew(step):
        ra, dec = step.params.get("ra", "00:00:00"), step.params.get("dec", "+00:00:00")
        print(f"slewing to ra={ra} dec={dec}")
        log.info(f"slew started to {ra} {dec}")
        await take(step, 0.2)
        print("on target")

    @sequencer.on_setup("configure")
    async def configure(step):
        settings = ", ".join(f"{k}={v}" for k, v in sorted(step.params.items())) or "defaults"
        print(f"configuring the instrument: {settings}")
        await take(step, 0.1)
        log.info("instrument configured")

    @sequencer.on_setup("move")
    async def move(step):
        print(f"moving {step.params.get('axis', 'focus')} to {step.params.get('to', 0)}")
        await take(step, 0.1)

    @sequencer.on_setup("wait")
    async def wait(step):
        await take(step, 1.0)

    @sequencer.on_observe("expose")
    async def expose(step):
        seconds = float(step.params.get("exposure", step.params.get("sleep", 0.3)))
        night["exposures"] += 1
        print(f"exposure {night['exposures']}: {seconds} s")
        log.info(f"shutter open for {seconds} s")
        await asyncio.sleep(seconds)
        log.info("shutter closed")

    @sequencer.on_observe("readout")
    async def readout(step):
        print(f"reading out exposure {night['exposures']}")
        await take(step, 0.1)

    @sequencer.on_new_sequence
    async def new_sequence():
        print("new sequence: checking the weather")
        log.info("new sequence accepted")

    @sequencer.on_go_online
    async def go_online():
        print("going online: opening the dome")

    @sequencer.on_go_offline
    async def go_offline():
        print("going offline: closing the dome")

    @sequencer.on_abort_sequence
    async def abort():
        print("aborting: the current step finishes, the rest is dropped")
        log.warning("sequence aborted")

    @sequencer.on_stop
    async def stop():
        print("stopping after the current step")

    @sequencer.on_shutdown
    async def shutdown():
        print("shutting down: parking the telescope")

    @sequencer.on_diagnostic_mode
    async def diagnostic(start_time, hint):
        night["mode"] = "diagnostic"
        print(f"diagnostic mode from {start_time}: {hint}")
        if hint.startswith("sleep:"):  # a slow hook, for demos and tests of Processing
            await asyncio.sleep(float(hint.removeprefix("sleep:")))

    @sequencer.on_operations_mode
    async def operations():
        night["mode"] = "operations"
        print("operations mode")

    log.info(f"darknight script loaded for {sequencer.prefix}")
