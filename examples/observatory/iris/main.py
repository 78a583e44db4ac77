"""IRIS.<mode>: the instrument of the example night (examples/observatory/README.md).

It is commanded by the top-level script (ESW.<mode>), or by hand with `si sequencer submit`:

- Setup `datum`: home the filter wheel.
- Setup `configure` `{"filter": "H"}`: move the wheel; a filter it does not have fails the step
  (that is the night's failing step: the run ends with `Error` naming it).
- Observe `expose` `{"exposure": 1.5}`: open the shutter that long; Observe `readout`.
- goOffline / goOnline: the detector goes to standby and back.

Every step prints what it does, so the top script's commands are visible in IRIS's own stdout.
"""

import asyncio

FILTERS = ("Z", "Y", "J", "H", "K")


def script(sequencer):
    log = sequencer.logger
    state = {"filter": None, "exposures": 0}

    async def take(step, default):
        seconds = float(step.params.get("sleep", default))
        if seconds > 0:
            await asyncio.sleep(seconds)

    @sequencer.on_setup("datum")
    async def datum(step):
        print("IRIS: homing the filter wheel", flush=True)
        await take(step, 0.5)
        state["filter"] = None

    @sequencer.on_setup("configure")
    async def configure(step):
        wanted = str(step.params.get("filter", "H"))
        if wanted not in FILTERS:
            held = ", ".join(FILTERS)
            raise ValueError(f"filter {wanted!r} is not in the wheel (it holds {held})")
        print(f"IRIS: filter {wanted}", flush=True)
        await take(step, 0.1)
        state["filter"] = wanted
        log.info(f"filter {wanted} in the beam")

    @sequencer.on_observe("expose")
    async def expose(step):
        seconds = float(step.params.get("exposure", 0.3))
        state["exposures"] += 1
        print(
            f"IRIS: exposure {state['exposures']}: {seconds} s in {state['filter'] or 'no filter'}",
            flush=True,
        )
        log.info(f"shutter open for {seconds} s")
        await asyncio.sleep(seconds)

    @sequencer.on_observe("readout")
    async def readout(step):
        print(f"IRIS: reading out exposure {state['exposures']}", flush=True)
        await take(step, 0.05)

    @sequencer.on_go_offline
    async def go_offline():
        print("IRIS: going offline, detector to standby", flush=True)

    @sequencer.on_go_online
    async def go_online():
        print("IRIS: back online, detector ready", flush=True)

    @sequencer.on_abort_sequence
    async def abort():
        print("IRIS: aborting after this step", flush=True)

    @sequencer.on_shutdown
    async def shutdown():
        print("IRIS: shutting down, shutter closed", flush=True)

    log.info(f"IRIS script loaded for {sequencer.prefix}")
