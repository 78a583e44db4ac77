"""Observing modes (sequences/modes.py): the configuration's validation, then configure,
shutdown, restart, statuses and resources end to end through a real hub (daphne and a Celery
worker), real Redis and real script processes running examples/darknight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sequences import modes
from sequences.errors import HubError
from tests.conftest import Hub, Person, wait_for
from tests.packaging import python_package, upload
from tests.sequences.sequencer_kit import ENDED, example_package, setup, unique

pytestmark = pytest.mark.django_db(transaction=True)


# -- validation (the domain alone) ---------------------------------------------------------

GOOD_YAML = """
modes:
  DarkNight:
    sequencers:
      - prefix: ESW.darknight
        script: observatory-top      # a sequence (script package) by name, or by id
      - prefix: IRIS.darknight
        script: observatory-iris
    resources: [IRIS, TCS]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(HubError) as caught:
        modes.validate(modes.parse_source(text)[0])
    assert caught.value.status == 422
    assert caught.value.code == "INVALID_CONFIG"
    return caught.value.details["errors"]


def test_the_documented_example_is_valid_yaml_and_json() -> None:
    doc, fmt = modes.parse_source(GOOD_YAML)
    assert fmt == "yaml"
    expected = {
        "DarkNight": {
            "sequencers": [
                {"prefix": "ESW.darknight", "script": "observatory-top"},
                {"prefix": "IRIS.darknight", "script": "observatory-iris"},
            ],
            "resources": ["IRIS", "TCS"],
        }
    }
    assert modes.validate(doc) == expected
    doc, fmt = modes.parse_source(json.dumps(doc))
    assert fmt == "json"
    assert modes.validate(doc) == expected


def mode_yaml(body: str) -> str:
    return "modes:\n  DarkNight:\n" + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- 1\n", "the configuration must be a mapping with 'modes', got a list"),
        ("other: 1\nmodes: {}\n", "other: unknown key (expected 'modes')"),
        ("{}", "modes: missing"),
        ("modes: [1]\n", "modes: expected a mapping of mode names, got a list"),
        ("modes:\n  'bad name': {sequencers: [{prefix: A.b, script: s}]}\n", "modes.bad name:"),
        ("modes:\n  DarkNight: 3\n", "modes.DarkNight: expected a mapping"),
        (mode_yaml("resources: [IRIS]"), "modes.DarkNight.sequencers: missing"),
        (mode_yaml("sequencers: []"), "modes.DarkNight.sequencers: expected a non-empty list"),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s}]\ncolour: red"),
            "modes.DarkNight.colour: unknown key",
        ),
        (
            mode_yaml("sequencers:\n  - {prefix: ESW.a, script: s}\n  - {script: t}"),
            "modes.DarkNight.sequencers[1].prefix: missing",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a}]"),
            "modes.DarkNight.sequencers[0].script: missing",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW, script: s}]"),
            "modes.DarkNight.sequencers[0].prefix: must look like 'ESW.darknight'",
        ),
        (
            mode_yaml("sequencers: [{prefix: 'ESW.a b', script: s}]"),
            "modes.DarkNight.sequencers[0].prefix: must look like",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: 7}]"),
            "modes.DarkNight.sequencers[0].script: expected a sequence name or id",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s, host: x}]"),
            "modes.DarkNight.sequencers[0].host: unknown key",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s}, {prefix: ESW.a, script: t}]"),
            "modes.DarkNight.sequencers[1].prefix: ESW.a is listed twice",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s}]\nresources: IRIS"),
            "modes.DarkNight.resources: expected a list of names, got a string",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s}]\nresources: [IRIS, 'a b']"),
            "modes.DarkNight.resources[1]: a resource is a name",
        ),
        (
            mode_yaml("sequencers: [{prefix: ESW.a, script: s}]\nresources: [IRIS, IRIS]"),
            "modes.DarkNight.resources[1]: IRIS is listed twice",
        ),
        ("modes: {a: [}\n", "not valid YAML"),
        ('{"modes": ', "not valid JSON"),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_problem_and_its_path(
    text: str, expected: str
) -> None:
    found = errors_of(text)
    assert any(expected in e for e in found), found


def test_every_problem_is_named_not_only_the_first() -> None:
    text = mode_yaml("sequencers:\n  - {prefix: ESW, script: s}\n  - {script: t}\nextra: 1")
    found = errors_of(text)
    assert any("sequencers[0].prefix" in e for e in found)
    assert any("sequencers[1].prefix: missing" in e for e in found)
    assert any("DarkNight.extra: unknown key" in e for e in found)


@pytest.mark.django_db
@pytest.mark.parametrize("text", ['{"modes": {}, "\\u0000": null}', 'modes: {"a\\0": 1}'])
def test_a_nul_escaped_in_the_text_is_refused_and_nothing_stored(text: str) -> None:
    """Found by the OpenAPI fuzz: JSON's escape gave a key with a NUL, which PostgreSQL
    refused (500)."""
    from sequences.models import ObservingModesConfig

    with pytest.raises(HubError) as caught:
        modes.set_config(text, None)
    assert caught.value.status == 422 and "NUL" in caught.value.message
    assert not ObservingModesConfig.objects.exists()


def test_a_huge_configuration_is_refused() -> None:
    with pytest.raises(HubError) as caught:
        modes.parse_source("#" * (modes.MAX_SOURCE + 1))
    assert "larger than" in caught.value.message


def test_step_summary_says_where_a_sequencer_is() -> None:
    def step(status: str, bp: bool = False) -> dict[str, Any]:
        return {"status": status, "command": "c", "hasBreakpoint": bp}

    def summary(state: str, *steps: dict[str, Any]) -> str:
        return modes.step_summary({"state": state, "stepList": list(steps)})["status"]

    assert summary("Idle") == "NA"
    assert summary("Loaded", step("Pending")) == "Loaded"
    assert summary("Running", step("Success"), step("InFlight")) == "Step 2 In Progress"
    assert summary("Running", step("Success"), step("Pending", True)) == "Step 2 Paused"
    assert summary("Idle", step("Success"), step("Failure"), step("Pending")) == "Step 2 Failed"
    assert summary("Idle", step("Success"), step("Success")) == "All Steps Completed"


# -- through a real hub --------------------------------------------------------------------


class Modes:
    """One test's clients and the names it made unique."""

    def __init__(self, hub: Hub, people: dict[str, Person]) -> None:
        def client(role: str) -> httpx.Client:
            return httpx.Client(base_url=hub.api, headers=people[role].headers(), timeout=90)

        self.admin = client("admin")
        self.operator = client("operator")
        self.viewer = client("viewer")
        self.tag = unique("m")  # subsystems and resources unique to the test

    def sub(self, name: str) -> str:
        return f"{name}{self.tag}"

    def set_config(self, config: dict[str, Any], expect: int = 200) -> dict[str, Any]:
        response = self.admin.put("/modes/config", json=config)
        assert response.status_code == expect, response.text
        return response.json()

    def mode(self, name: str) -> dict[str, Any]:
        response = self.viewer.get(f"/mode/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    def statuses(self) -> dict[str, str]:
        return {m["name"]: m["status"] for m in self.viewer.get("/modes").json()}

    def configure(self, name: str, expect: int = 200) -> dict[str, Any]:
        response = self.operator.post(f"/mode/{name}/configure")
        assert response.status_code == expect, response.text
        return response.json()

    def shutdown_all(self) -> None:
        """Shut every configured mode down, then wait until their processes have ended, so
        no worker writes while the test database is emptied."""
        instances = []
        for mode in self.viewer.get("/modes").json():
            if mode["status"] == "Configured":
                instances += [
                    s["sequencer"]["instance"] for s in mode["sequencers"] if s["sequencer"]
                ]
                self.operator.post(f"/mode/{mode['name']}/shutdown")
        deadline = time.monotonic() + 15
        for iid in instances:
            while time.monotonic() < deadline:
                info = self.admin.get(f"/instance/{iid}")
                if info.status_code != 200 or info.json()["status"] in ENDED:
                    break
                time.sleep(0.05)
        for c in (self.admin, self.operator, self.viewer):
            c.close()


@pytest.fixture
def hubmodes(hub: Hub, people: dict[str, Person]) -> Iterator[Modes]:
    m = Modes(hub, people)
    # A sequencer's location names its worker's host from the worker's row: a test before this
    # one may have flushed the rows, which the shared hub's worker writes back at its next beat.
    wait_for(lambda: m.viewer.get("/workers").json(), what="the shared hub's worker row")
    try:
        yield m
    finally:
        m.shutdown_all()


def night_config(m: Modes, script_id: str) -> dict[str, Any]:
    """Four modes: Night (by name and by id), Twin (shares a resource with Night), Broken
    (a missing script), Day (free)."""
    esw, iris, tcs = "ESW", m.sub("IRIS"), m.sub("TCS")
    return {
        "modes": {
            "Night": {
                "sequencers": [
                    {"prefix": f"{iris}.night", "script": "darknight"},
                    {"prefix": f"{esw}.night", "script": script_id},
                ],
                "resources": [iris, tcs],
            },
            "Twin": {
                "sequencers": [{"prefix": f"{esw}.twin", "script": "darknight"}],
                "resources": [tcs, m.sub("WFOS")],
            },
            "Broken": {
                "sequencers": [
                    {"prefix": f"{esw}.broken", "script": "darknight"},
                    {"prefix": f"{iris}.broken", "script": "no-such-script"},
                ],
                "resources": [m.sub("NFIRAOS")],
            },
            "Day": {
                "sequencers": [{"prefix": f"{m.sub('APS')}.day", "script": "darknight"}],
                "resources": [m.sub("APS")],
            },
        }
    }


def components(m: Modes) -> dict[str, str]:
    return {c["name"]: c["state"] for c in m.viewer.get("/components").json()}


def live_sequencers(m: Modes) -> set[str]:
    return {s["id"] for s in m.viewer.get("/sequencers").json() if s["state"] != "Killed"}


def test_configure_brings_a_mode_up_and_refusals_change_nothing(hubmodes: Modes) -> None:
    m = hubmodes
    script_id = upload(m.admin, example_package("darknight"))
    m.set_config(night_config(m, script_id))
    assert m.statuses() == {
        "Night": "Configurable",
        "Twin": "Configurable",
        "Broken": "NonConfigurable",
        "Day": "Configurable",
    }
    broken = m.mode("Broken")
    assert broken["missing"][0]["script"] == "no-such-script"
    assert "missing scripts: no-such-script" in broken["reasons"][0]

    answer = m.configure("Night")
    assert answer["status"] == "Configured"
    # The ESW sequencer is listed first, as the Observations page shows it.
    prefixes = [s["prefix"] for s in answer["sequencers"]]
    assert prefixes == ["ESW.night", f"{m.sub('IRIS')}.night"]
    for entry in answer["sequencers"]:
        seq = entry["sequencer"]
        assert seq["state"] == "Idle"
        assert seq["id"] and seq["component"] and seq["worker"] and seq["host"]
        assert seq["script"]["id"] == script_id
        # The component was made for the prefix's subsystem, as ESW names them.
        subsystem = entry["prefix"].split(".")[0]
        assert seq["component"] == f"{subsystem}.{subsystem}_1"
        full = m.viewer.get(f"/sequencer/{seq['id']}").json()
        assert "slew" in full["handlers"]["setup"]  # the script is loaded
    assert components(m)["ESW.ESW_1"] == "Running"

    # The script really runs: a step through one of the mode's sequencers.
    sid = answer["sequencers"][0]["sequencer"]["id"]
    started = m.operator.post(f"/sequencer/{sid}/submit", json={"commands": [setup("move")]})
    assert started.status_code == 200, started.text
    final = m.viewer.get(f"/sequencer/{sid}/queryFinal/{started.json()['runId']}").json()
    assert final["type"] == "Completed"

    statuses = m.statuses()
    assert statuses["Night"] == "Configured"
    assert statuses["Twin"] == "NonConfigurable"
    twin = m.mode("Twin")
    assert twin["conflicts"] == [{"mode": "Night", "resources": [m.sub("TCS")]}]
    assert f"{m.sub('TCS')} in use by mode Night" in twin["reasons"][0]

    resources = {r["name"]: r for r in m.viewer.get("/resources").json()}
    assert resources[m.sub("IRIS")]["status"] == "InUse"
    assert resources[m.sub("IRIS")]["mode"] == "Night"
    assert resources[m.sub("TCS")]["modes"] == ["Night", "Twin"]
    assert resources[m.sub("WFOS")] == {
        "name": m.sub("WFOS"),
        "status": "Available",
        "mode": None,
        "modes": ["Twin"],
    }

    # Refusals change nothing: no component, no sequencer, no configured mode.
    before = (components(m), live_sequencers(m))
    refused = m.configure("Twin", expect=409)
    assert refused["code"] == "CONFLICTING_RESOURCES"
    assert refused["conflicts"] == [{"mode": "Night", "resources": [m.sub("TCS")]}]
    assert f"{m.sub('TCS')} in use by mode Night" in refused["error"]
    missing = m.configure("Broken", expect=422)
    assert missing["code"] == "MISSING_SCRIPTS"
    assert missing["missing"][0]["prefix"] == f"{m.sub('IRIS')}.broken"
    assert "no-such-script" in missing["error"]
    unknown = m.configure("Nope", expect=404)
    assert unknown["code"] == "NOT_FOUND"
    assert (components(m), live_sequencers(m)) == before
    assert m.statuses()["Twin"] == "NonConfigurable"

    # Configuring again reuses what runs, even after a newer upload of the script's name.
    upload(m.admin, example_package("darknight"))
    again = m.configure("Night")
    assert [s["sequencer"]["id"] for s in again["sequencers"]] == [
        s["sequencer"]["id"] for s in answer["sequencers"]
    ]
    # Another free mode goes up beside it.
    assert m.configure("Day")["status"] == "Configured"

    # Shutdown: sequencers Killed, components Idle, resources free, Twin configurable.
    down = m.operator.post("/mode/Night/shutdown")
    assert down.status_code == 200, down.text
    assert down.json()["status"] == "Configurable"
    assert [s["answer"]["type"] for s in down.json()["sequencers"]] == ["Ok", "Ok"]
    for entry in answer["sequencers"]:
        state = m.viewer.get(f"/sequencer/{entry['sequencer']['id']}").json()["state"]
        assert state == "Killed"
        assert components(m)[entry["sequencer"]["component"]] == "Idle"
    assert m.statuses()["Twin"] == "Configurable"
    assert all(
        r["status"] == "Available" or r["mode"] == "Day" for r in m.viewer.get("/resources").json()
    )
    again_down = m.operator.post("/mode/Night/shutdown")
    assert again_down.status_code == 409
    assert again_down.json()["code"] == "NOT_CONFIGURED"
    assert m.operator.post("/mode/Nope/shutdown").status_code == 404

    # Twin now configures, reusing the Idle ESW component Night left.
    twin_up = m.configure("Twin")
    assert twin_up["sequencers"][0]["sequencer"]["component"] == "ESW.ESW_1"


def test_restart_reloads_one_sequencer_of_a_configured_mode(hubmodes: Modes) -> None:
    m = hubmodes
    upload(m.admin, example_package("darknight"))
    prefix = f"{m.sub('IRIS')}.night"
    m.set_config({"modes": {"Night": {"sequencers": [{"prefix": prefix, "script": "darknight"}]}}})
    first = m.configure("Night")["sequencers"][0]["sequencer"]

    restarted = m.operator.post(f"/modes/sequencer/{prefix}/restart")
    assert restarted.status_code == 200, restarted.text
    body = restarted.json()
    assert body["mode"] == "Night"
    second = body["sequencer"]
    assert second["id"] != first["id"]
    assert second["component"] == first["component"]
    assert second["state"] == "Idle"
    assert m.viewer.get(f"/sequencer/{first['id']}").json()["state"] == "Killed"
    assert m.mode("Night")["sequencers"][0]["sequencer"]["id"] == second["id"]

    # A mode's sequencer killed under it (its component unloaded) shows Killed, and restart
    # brings it back in its component.
    unload = m.admin.post(f"/component/{second['component']}/unload-script")
    assert unload.status_code == 200, unload.text
    assert m.mode("Night")["sequencers"][0]["sequencer"]["state"] == "Killed"
    third = m.operator.post(f"/modes/sequencer/{prefix}/restart")
    assert third.status_code == 200, third.text
    assert third.json()["sequencer"]["component"] == first["component"]
    assert third.json()["sequencer"]["state"] == "Idle"

    unknown = m.operator.post(f"/modes/sequencer/{m.sub('X')}.y/restart")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "NOT_FOUND"


def test_a_script_that_fails_to_load_leaves_nothing_running(hubmodes: Modes) -> None:
    m = hubmodes
    upload(m.admin, example_package("darknight"))
    bad = upload(m.admin, python_package("raise RuntimeError('no script here')\n"))
    m.set_config(
        {
            "modes": {
                "Night": {
                    "sequencers": [
                        {"prefix": "ESW.night", "script": "darknight"},
                        {"prefix": f"{m.sub('IRIS')}.night", "script": bad},
                    ],
                    "resources": [m.sub("IRIS")],
                }
            }
        }
    )
    before = live_sequencers(m)
    refused = m.configure("Night", expect=422)
    assert refused["code"] == "LOADING_SCRIPT_FAILED"
    assert refused["prefix"] == f"{m.sub('IRIS')}.night"
    assert "no script here" in refused["error"]
    assert live_sequencers(m) == before
    assert m.statuses()["Night"] == "Configurable"


def test_a_prefix_held_by_another_script_is_refused(hubmodes: Modes) -> None:
    m = hubmodes
    darknight = upload(m.admin, example_package("darknight"))
    other = upload(m.admin, example_package("failing-script"))
    prefix = "ESW.night"
    comp = "ESW.manual"
    assert m.admin.post("/components", json={"name": comp}).status_code == 201
    loaded = m.admin.post(
        f"/component/{comp}/load-script", json={"sequence": other, "prefix": prefix}
    )
    assert loaded.status_code == 200, loaded.text
    try:
        m.set_config(
            {"modes": {"Night": {"sequencers": [{"prefix": prefix, "script": darknight}]}}}
        )
        refused = m.configure("Night", expect=409)
        assert refused["code"] == "PREFIX_IN_USE"
        assert prefix in refused["error"]
    finally:
        m.admin.post(f"/component/{comp}/unload-script")


def test_roles_and_a_bad_configuration_changes_nothing(hubmodes: Modes) -> None:
    m = hubmodes
    good = {"modes": {"Day": {"sequencers": [{"prefix": "APS.day", "script": "darknight"}]}}}
    stored = m.set_config(good)
    assert stored["format"] == "json"
    assert stored["updatedBy"] == "admin-user"

    bad = m.admin.put(
        "/modes/config",
        content=mode_yaml("sequencers:\n  - {prefix: ESW.a, script: s}\n  - {script: t}"),
        headers={"Content-Type": "application/yaml"},
    )
    assert bad.status_code == 422
    assert bad.json()["code"] == "INVALID_CONFIG"
    assert "modes.DarkNight.sequencers[1].prefix: missing" in bad.json()["error"]
    assert m.viewer.get("/modes/config").json()["modes"] == stored["modes"]

    # YAML is kept as written, comments and all, for the editor.
    yaml_text = "# the night\n" + GOOD_YAML
    put = m.admin.put(
        "/modes/config", content=yaml_text, headers={"Content-Type": "application/yaml"}
    )
    assert put.status_code == 200, put.text
    assert put.json()["format"] == "yaml"
    assert m.viewer.get("/modes/config").json()["source"] == yaml_text

    assert m.operator.put("/modes/config", json=good).status_code == 403
    assert m.viewer.post("/mode/DarkNight/configure").status_code == 403
    assert m.viewer.post("/mode/DarkNight/shutdown").status_code == 403
    assert m.viewer.post("/modes/sequencer/ESW.darknight/restart").status_code == 403
    for path in ("/modes", "/modes/config", "/resources", "/mode/DarkNight"):
        assert m.viewer.get(path).status_code == 200, path
    assert m.viewer.get("/mode/Nope").status_code == 404


def test_two_configures_at_once_cannot_both_take_a_resource(hubmodes: Modes) -> None:
    m = hubmodes
    upload(m.admin, example_package("darknight"))
    shared = m.sub("TCS")
    m.set_config(
        {
            "modes": {
                "Left": {
                    "sequencers": [{"prefix": f"{m.sub('IRIS')}.left", "script": "darknight"}],
                    "resources": [shared],
                },
                "Right": {
                    "sequencers": [{"prefix": f"{m.sub('WFOS')}.right", "script": "darknight"}],
                    "resources": [shared],
                },
            }
        }
    )
    answers: dict[str, httpx.Response] = {}

    def configure(name: str) -> None:
        answers[name] = m.operator.post(f"/mode/{name}/configure")

    threads = [threading.Thread(target=configure, args=(n,)) for n in ("Left", "Right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [200, 409], {n: a.text for n, a in answers.items()}
    loser = next(a.json() for a in answers.values() if a.status_code == 409)
    assert loser["code"] == "CONFLICTING_RESOURCES"
    assert sorted(m.statuses().values()) == ["Configured", "NonConfigurable"]
    # Exactly one sequencer came up: the loser started nothing.
    assert len(live_sequencers(m)) == 1

    # A configured mode whose sequencer was killed under it shuts down all the same.
    winner = next(n for n, a in answers.items() if a.status_code == 200)
    seq = m.mode(winner)["sequencers"][0]["sequencer"]
    assert m.operator.post(f"/sequencer/{seq['id']}/shutdown").status_code == 200
    down = m.operator.post(f"/mode/{winner}/shutdown")
    assert down.status_code == 200, down.text
    assert down.json()["sequencers"][0]["answer"] is None  # nothing left to unload
    assert set(m.statuses().values()) == {"Configurable"}
