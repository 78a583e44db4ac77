"""Drive a hub with PyPI's scramjet-api-client 1.1.1, unmodified, and print what it saw as JSON.

Usage: python pypi_client_flow.py API_URL LIFECYCLE_TAR EVENTS_TAR FOREVER_TAR [TOKEN]

Run it with only that package on the path: it is a top-level package named `client`, the same
name as this project's client, so the two cannot share one environment.
"""

import asyncio
import json
import sys

from client.host_client import HostClient
from client.instance_client import InstanceClient
from client_utils.base_client import BaseClient


def step(what: str) -> None:
    """Progress on stderr: when the flow hangs, the test's failure says where."""
    print(f"step: {what}", file=sys.stderr, flush=True)


async def text(host: HostClient, path: str) -> str:
    # 1.1.1's InstanceClient has no stream getter; its host's _get_stream is what
    # get_log_stream uses.
    return "".join([line async for line in host._get_stream(path)])


async def wait_status(inst: InstanceClient, wanted: tuple[str, ...]) -> dict:
    for _ in range(300):
        info = await inst.get_info()
        if info.get("status") in wanted:
            return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"instance {inst.id} never reached {wanted}")


async def main() -> None:
    api, lifecycle, events, forever = sys.argv[1:5]
    token = sys.argv[5] if len(sys.argv) > 5 else ""
    if token:
        BaseClient.setDefaultHeaders({"Authorization": f"Bearer {token}"})
    host = HostClient(api)
    seen: dict = {"version": await host.get_version(), "load": await host.get_load_check()}

    with open(lifecycle, "rb") as fh:
        seq = await host.send_sequence(fh.read())
    seen["sequenceId"] = seq.id
    seen["listed"] = [s["id"] for s in await host.list_sequences()]
    step("sequence")
    seen["sequence"] = await host.get_sequence_info(seq.id)
    step("sequenceInfo")
    seen["sequenceInfo"] = await seq.get_info()

    # start() of 1.1.1 sends no payload: run() gets its defaults (0..999).
    inst = await seq.start()
    seen["instanceId"] = inst.id
    step("output")
    seen["output"] = await text(host, f"instance/{inst.id}/output")
    step("info")
    seen["info"] = await wait_status(inst, ("completed", "errored"))
    step("instanceInfo")
    seen["instanceInfo"] = await host.get_instance_info(inst.id)
    step("sequenceInstances")
    seen["sequenceInstances"] = await seq.list_instances()
    seen["instances"] = [i["id"] for i in await host.list_instances()]

    with open(events, "rb") as fh:
        ev_seq = await host.send_sequence(fh.read())
    ev = await ev_seq.start()
    # An event sent before run() registered its handler would be dropped (as on STH): wait
    # for the sequence's "ready".
    step("ready")
    seen["ready"] = await host._get(f"instance/{ev.id}/event/ready")
    step("eventAnswer")
    seen["eventAnswer"] = await ev.send_event("ping", "hi")
    # The answer before input closes: the sequence ends with its input. 1.1.1 has no getter
    # for a named event (its get_next_event asks for /once without a name).
    step("pong")
    seen["pong"] = await host._get(f"instance/{ev.id}/event/pong")
    # Bytes go as they are; a str would be JSON-encoded by 1.1.1's _post.
    step("inputAnswer")
    seen["inputAnswer"] = await ev.send_input(b"one\ntwo\n")
    step("echo")
    seen["echo"] = await text(host, f"instance/{ev.id}/output")

    with open(forever, "rb") as fh:
        forever_seq = await host.send_sequence(fh.read())
    stopped = await forever_seq.start()
    await wait_status(stopped, ("running",))
    step("health")
    seen["health"] = await stopped.get_health()
    step("stopAnswer")
    seen["stopAnswer"] = await stopped.stop(1000, False)
    step("stopped")
    seen["stopped"] = await wait_status(stopped, ("completed", "errored"))

    killed = await forever_seq.start()
    await wait_status(killed, ("running",))
    step("killAnswer")
    seen["killAnswer"] = await killed.kill()
    step("killed")
    seen["killed"] = await wait_status(killed, ("completed", "errored"))

    busy = await forever_seq.start()
    await wait_status(busy, ("running",))
    step("deleteInUse")
    seen["deleteInUse"] = await host.delete_sequence(forever_seq.id)  # answers, never raises
    await busy.kill()
    await wait_status(busy, ("completed", "errored"))
    step("deleted")
    seen["deleted"] = await host.delete_sequence(forever_seq.id)
    # 1.1.1 prints every POST it makes to stdout: the result is the line marked RESULT.
    print("RESULT " + json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())
