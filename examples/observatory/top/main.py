"""ESW.<mode>: the top-level script of the example night (examples/observatory/README.md).

Loaded as `ESW.darknight`, it drives `IRIS.darknight` and `TCS.darknight` (the same observing
mode, `darknight`, after the subsystem) the way TMT's ESW top-level sequencers do: it submits
step lists to them, waits for their results, and takes them offline and online. Its own steps,
submitted by the operator (examples/observatory/night.json):

- Setup `prepare` `{"ra", "dec", "filter"}`: TCS slews while IRIS homes its wheel and sets the
  filter, both at once. Either failing fails this step: there is no night without a setup.
- Observe `observe` `{"exposures": 3, "exposure": 1.5, "filter"?}`: TCS tracks while IRIS takes
  the exposures; when IRIS is done, TCS is told to stop tracking. An IRIS run that fails
  (`Error` naming its failing step) is reported on stdout and in the log, and the night goes on.
- Setup `offline-online` `{"subsystem": "IRIS", "seconds": 1}`: take that subsystem offline,
  check that it says so, and bring it back online after `seconds`.
- Setup `end-night`: TCS parks while IRIS homes its wheel; then a summary of the night.

An abort of this sequencer aborts whichever subsystem is running (ESW does not do that for a
script: `on_abort_sequence` below does).

Anything a subsystem refuses (say, goOffline while it is Running) raises SequencerError here;
where this script does not catch it, the step fails with the subsystem's message.
"""

import asyncio


def setup(command, **params):
    return {"type": "Setup", "command": command, "params": params}


def observe(command, **params):
    return {"type": "Observe", "command": command, "params": params}


def counted(number, noun):
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def script(sequencer):
    log = sequencer.logger
    mode = sequencer.prefix.split(".", 1)[1]  # ESW.darknight -> darknight
    iris = sequencer.sequencer(f"IRIS.{mode}")
    tcs = sequencer.sequencer(f"TCS.{mode}")
    subsystems = {"IRIS": iris, "TCS": tcs}
    night = {"exposures": 0, "errors": [], "aborted": False}

    def say(text):
        print(f"ESW: {text}", flush=True)

    @sequencer.on_setup("prepare")
    async def prepare(step):
        p = step.params
        say(f"setting up {tcs.target} and {iris.target} at once")
        answers = await asyncio.gather(
            tcs.submit_and_wait([setup("slew", ra=p.get("ra"), dec=p.get("dec"))], timeout=60),
            iris.submit_and_wait(
                [setup("datum"), setup("configure", filter=p.get("filter", "H"))], timeout=60
            ),
            return_exceptions=True,
        )
        failed = [a for a in answers if isinstance(a, BaseException)]
        for handle, answer in zip((tcs, iris), answers, strict=True):
            if not isinstance(answer, BaseException):
                say(f"{handle.target} set up (run {answer.run_id})")
        if failed:
            raise failed[0]  # the step fails with the subsystem's message

    @sequencer.on_observe("observe")
    async def observe_target(step):
        p = step.params
        count, seconds = int(p.get("exposures", 1)), float(p.get("exposure", 0.3))
        exposures = counted(count, "exposure")
        steps = [setup("configure", filter=p["filter"])] if "filter" in p else []
        for _ in range(count):
            steps += [observe("expose", exposure=seconds), observe("readout")]
        limit = count * (seconds + 10) + 30  # a bound: normally the stop below ends it
        tracking = await tcs.submit([setup("track", seconds=limit)])
        say(f"{tcs.target} tracking (run {tracking.run_id}); {iris.target}: {exposures}")
        try:
            done = await iris.submit_and_wait(steps, timeout=limit)
        except sequencer.SequencerError as failed:
            # A subsystem's failure is reported, not fatal: the next target may go well.
            night["errors"].append(str(failed))
            say(f"{failed} (reported; the night goes on)")
            log.warning(f"subsystem error: {failed}")
            if isinstance(failed, sequencer.SequencerTimeout):
                await iris.abort_sequence()
        else:
            if night["aborted"]:  # an aborted run completes too, without its pending steps
                say(f"{iris.target} run {done.run_id} ended early: the night was aborted")
            else:
                night["exposures"] += count
                say(f"{iris.target} completed run {done.run_id}: {exposures}")
        finally:
            await end_tracking(tracking.run_id)

    async def end_tracking(run_id):
        try:
            await tcs.stop()
        except sequencer.SequencerError as refused:
            say(f"{tcs.target} was not tracking any more: {refused}")
        done = await tcs.query_final(run_id, timeout=30)
        say(f"{tcs.target} tracking ended (run {done.run_id})")

    @sequencer.on_setup("offline-online")
    async def offline_online(step):
        name = str(step.params.get("subsystem", "IRIS"))
        if name not in subsystems:
            raise ValueError(f"subsystem {name!r}: expected one of {', '.join(subsystems)}")
        handle = subsystems[name]
        await handle.go_offline()
        say(f"{handle.target} is {await handle.get_state()}")
        await asyncio.sleep(float(step.params.get("seconds", 1)))
        await handle.go_online()
        say(f"{handle.target} is {await handle.get_state()} again")

    @sequencer.on_setup("end-night")
    async def end_night(step):
        await asyncio.gather(
            tcs.submit_and_wait([setup("park")], timeout=60),
            iris.submit_and_wait([setup("datum")], timeout=60),
        )
        errors = night["errors"]
        exposures, reported = counted(night["exposures"], "exposure"), counted(len(errors), "error")
        say(f"night over: {exposures}, {reported} from the subsystems reported")
        for error in errors:
            say(f"  {error}")

    @sequencer.on_new_sequence
    async def new_night():
        # Each submitted step list is a night of its own.
        night.update(exposures=0, errors=[], aborted=False)

    @sequencer.on_abort_sequence
    async def abort():
        # The subsystems are not aborted for us: abort whichever is still running.
        night["aborted"] = True
        for handle in (iris, tcs):
            try:
                if await handle.get_state() == "Running":
                    await handle.abort_sequence()
            except sequencer.SequencerError as refused:
                say(f"could not abort {handle.target}: {refused}")

    log.info(f"top-level script loaded for {sequencer.prefix}: drives {iris.target}, {tcs.target}")
