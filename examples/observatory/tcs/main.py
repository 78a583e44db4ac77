"""TCS.<mode>: the telescope of the example night (examples/observatory/README.md).

It is commanded by the top-level script (ESW.<mode>), or by hand with `si sequencer submit`:

- Setup `slew` `{"ra": "10:00:00", "dec": "+20:00:00"}`: point the telescope.
- Setup `track` `{"seconds": 60}`: track the target until `seconds` have passed or the
  sequencer is told to `stop` (its stop handler runs beside the step and ends the tracking).
- Setup `park`: stow the telescope.
- goOffline / goOnline: the mount's brakes on and off.
"""

import asyncio
import contextlib
import time


def script(sequencer):
    log = sequencer.logger
    state = {"target": None, "stop": asyncio.Event()}

    @sequencer.on_setup("slew")
    async def slew(step):
        ra, dec = step.params.get("ra", "00:00:00"), step.params.get("dec", "+00:00:00")
        print(f"TCS: slewing to ra={ra} dec={dec}", flush=True)
        await asyncio.sleep(float(step.params.get("sleep", 1.0)))  # slewing takes a while
        state["target"] = f"{ra} {dec}"
        print("TCS: on target", flush=True)

    @sequencer.on_setup("track")
    async def track(step):
        limit = float(step.params.get("seconds", 60))
        started = time.monotonic()
        print(f"TCS: tracking {state['target'] or 'the zenith'} (at most {limit} s)", flush=True)
        with contextlib.suppress(TimeoutError):  # the limit passed: tracking ends anyway
            await asyncio.wait_for(state["stop"].wait(), timeout=limit)
        print(f"TCS: tracked for {time.monotonic() - started:.1f} s", flush=True)

    @sequencer.on_setup("park")
    async def park(step):
        print("TCS: parking", flush=True)
        await asyncio.sleep(float(step.params.get("sleep", 0.1)))
        state["target"] = None

    @sequencer.on_new_sequence
    async def new_sequence():
        # Cleared before each run starts (not in `track`): a stop that comes before the
        # tracking step is under way must still end it.
        state["stop"].clear()

    @sequencer.on_stop
    async def stop():
        # Runs beside the step in flight: the tracking step sees it and ends.
        print("TCS: stop, ending the tracking", flush=True)
        state["stop"].set()

    @sequencer.on_abort_sequence
    async def abort():
        print("TCS: abort, ending the tracking", flush=True)
        state["stop"].set()

    @sequencer.on_go_offline
    async def go_offline():
        print("TCS: going offline, brakes on", flush=True)

    @sequencer.on_go_online
    async def go_online():
        print("TCS: back online, brakes off", flush=True)

    @sequencer.on_shutdown
    async def shutdown():
        print("TCS: shutting down", flush=True)

    log.info(f"TCS script loaded for {sequencer.prefix}")
