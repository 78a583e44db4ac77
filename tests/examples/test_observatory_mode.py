"""The example night brought up as an observing mode (issue 18 items 3 and 4 together):
examples/observatory/modes.yaml stored as the hub's configuration, `DarkNight` configured (three
sequencers on the real worker, each in a component made for its subsystem), the night submitted
to ESW.darknight and completed, then the mode shut down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from client.pack import pack_to_bytes
from tests.conftest import ROOT, Hub, Person
from tests.packaging import upload
from tests.sequences.sequencer_kit import ENDED

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

OBSERVATORY = ROOT / "examples" / "observatory"
NIGHT = json.loads((OBSERVATORY / "night.json").read_text(encoding="utf-8"))


@pytest.fixture
def api(hub: Hub, people: dict[str, Person]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.api, headers=people["admin"].headers(), timeout=150) as c:
        yield c
        instances = []
        for mode in c.get("/modes").json():
            if mode["status"] == "Configured":
                instances += [
                    s["sequencer"]["instance"] for s in mode["sequencers"] if s["sequencer"]
                ]
                c.post(f"/mode/{mode['name']}/shutdown")
        deadline = time.monotonic() + 15
        for iid in instances:
            while time.monotonic() < deadline:
                if c.get(f"/instance/{iid}").json()["status"] in ENDED:
                    break
                time.sleep(0.05)


def test_the_example_night_as_an_observing_mode(api: httpx.Client) -> None:
    for folder in ("top", "iris", "tcs"):
        upload(api, pack_to_bytes(OBSERVATORY / folder))
    stored = api.put(
        "/modes/config",
        content=(OBSERVATORY / "modes.yaml").read_bytes(),
        headers={"Content-Type": "application/yaml"},
    )
    assert stored.status_code == 200, stored.text
    assert list(stored.json()["modes"]) == ["DarkNight"]

    up = api.post("/mode/DarkNight/configure")
    assert up.status_code == 200, up.text
    located = {s["prefix"]: s["sequencer"] for s in up.json()["sequencers"]}
    assert list(located) == ["ESW.darknight", "IRIS.darknight", "TCS.darknight"]
    assert {p: s["component"] for p, s in located.items()} == {
        "ESW.darknight": "ESW.ESW_1",
        "IRIS.darknight": "IRIS.IRIS_1",
        "TCS.darknight": "TCS.TCS_1",
    }

    esw = located["ESW.darknight"]["id"]
    started = api.post(f"/sequencer/{esw}/submit", json=NIGHT)
    assert started.status_code == 200, started.text
    run_id = started.json()["runId"]
    final = api.get(f"/sequencer/{esw}/queryFinal/{run_id}", params={"timeout": 120}).json()
    assert final == {"type": "Completed", "runId": run_id}
    night = api.get("/mode/DarkNight").json()
    assert night["sequencers"][0]["sequencer"]["step"]["status"] == "All Steps Completed"
    resources = {r["name"]: r["status"] for r in api.get("/resources").json()}
    assert resources == {"IRIS": "InUse", "TCS": "InUse"}

    down = api.post("/mode/DarkNight/shutdown")
    assert down.status_code == 200, down.text
    assert {s["answer"]["type"] for s in down.json()["sequencers"]} == {"Ok"}
