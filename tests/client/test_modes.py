"""Observing modes through the Python client (sync and async) and the `si` CLI, against a
live hub with real script processes (examples/darknight)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import AsyncHostClient, HostClient, HubClientError
from tests.client.conftest import Si
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

DARKNIGHT = ROOT / "examples" / "darknight"
ENDED = ("completed", "errored", "lost")
CONFIG = """# two modes sharing TCS
modes:
  Night:
    sequencers:
      - prefix: ESW.night
        script: darknight
      - prefix: IRIS.night
        script: darknight
    resources: [IRIS, TCS]
  Twilight:
    sequencers:
      - prefix: TCS.twilight
        script: darknight
    resources: [TCS]
"""


@pytest.fixture
def tidy(host: HostClient) -> Iterator[HostClient]:
    """Every configured mode shut down at the end, its processes ended, before the database
    is emptied."""
    yield host
    instances = []
    for mode in host.list_modes():
        if mode["status"] == "Configured":
            instances += [s["sequencer"]["instance"] for s in mode["sequencers"] if s["sequencer"]]
            host.shutdown_mode(mode["name"])
    deadline = time.monotonic() + 15
    for iid in instances:
        while time.monotonic() < deadline:
            if host.get_instance_client(iid).get_info()["status"] in ENDED:
                break
            time.sleep(0.05)


def test_client_sets_configures_restarts_and_shuts_down(tidy: HostClient) -> None:
    host = tidy
    host.send_sequence(DARKNIGHT)
    stored = host.set_modes_config(CONFIG, "yaml")
    assert list(stored["modes"]) == ["Night", "Twilight"]
    assert host.get_modes_config()["source"] == CONFIG

    with pytest.raises(HubClientError) as bad:
        host.set_modes_config({"modes": {"Night": {"sequencers": [{"prefix": "ESW.x"}]}}})
    assert bad.value.status == 422
    assert bad.value.code == "INVALID_CONFIG"
    assert "modes.Night.sequencers[0].script: missing" in str(bad.value)

    up = host.configure_mode("Night")
    assert up["status"] == "Configured"
    assert {s["prefix"] for s in up["sequencers"]} == {"ESW.night", "IRIS.night"}
    assert all(s["sequencer"]["worker"] for s in up["sequencers"])
    statuses = {m["name"]: m["status"] for m in host.list_modes()}
    assert statuses == {"Night": "Configured", "Twilight": "NonConfigurable"}
    with pytest.raises(HubClientError) as conflict:
        host.configure_mode("Twilight")
    assert conflict.value.status == 409
    assert conflict.value.code == "CONFLICTING_RESOURCES"
    assert "TCS in use by mode Night" in str(conflict.value)
    in_use = {r["name"]: r["mode"] for r in host.list_resources()}
    assert in_use == {"IRIS": "Night", "TCS": "Night"}

    old = host.get_mode("Night")["sequencers"][1]["sequencer"]["id"]
    again = host.restart_mode_sequencer("IRIS.night")
    assert again["mode"] == "Night" and again["sequencer"]["id"] != old

    down = host.shutdown_mode("Night")
    assert down["status"] == "Configurable"
    assert {r["status"] for r in host.list_resources()} == {"Available"}


async def test_async_client_twins(tidy: HostClient, hub, people) -> None:
    tidy.send_sequence(DARKNIGHT)
    async with AsyncHostClient(hub.api, token=people["admin"].token) as ahost:
        await ahost.set_modes_config(CONFIG)
        assert (await ahost.get_modes_config())["format"] == "yaml"
        assert (await ahost.configure_mode("Twilight"))["status"] == "Configured"
        assert (await ahost.get_mode("Night"))["status"] == "NonConfigurable"
        assert [m["status"] for m in await ahost.list_modes()] == [
            "NonConfigurable",
            "Configured",
        ]
        assert (await ahost.list_resources())[0] == {
            "name": "IRIS",
            "status": "Available",
            "mode": None,
            "modes": ["Night"],
        }
        restarted = await ahost.restart_mode_sequencer("TCS.twilight")
        assert restarted["sequencer"]["prefix"] == "TCS.twilight"
        assert (await ahost.shutdown_mode("Twilight"))["mode"] == "Twilight"


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def test_si_mode_commands(si: Si, tidy: HostClient, tmp_path: Path) -> None:
    tidy.send_sequence(DARKNIGHT)
    config = tmp_path / "modes.yaml"
    config.write_text(CONFIG)
    assert out(si("mode", "config", "set", str(config))).strip() == (
        "stored 2 observing mode(s): Night, Twilight"
    )
    assert out(si("mode", "config", "get")).strip() == CONFIG.strip()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modes": {"Night": {"sequencers": [{"script": "x"}]}}}))
    refused = si("mode", "config", "set", str(bad), check=False)
    assert refused.returncode == 1
    assert "modes.Night.sequencers[0].prefix: missing" in refused.stderr.decode()

    listed = out(si("mode", "ls"))
    assert "Night" in listed and "Configurable" in listed
    configured = out(si("mode", "configure", "Night"))
    assert configured.startswith("Night: Configured")
    assert "ESW.night" in configured and "IRIS.night" in configured
    info = out(si("mode", "info", "Night"))
    assert info.startswith("Night: Configured") and "resources: IRIS, TCS" in info
    assert "ESW.ESW_1" in info and "Idle" in info
    as_json = json.loads(out(si("mode", "ls", "--json")))
    assert [m["status"] for m in as_json] == ["Configured", "NonConfigurable"]
    assert "TCS in use by mode Night" in out(si("mode", "ls"))
    resources = out(si("resources"))
    assert "IRIS" in resources and "InUse" in resources and "Night" in resources

    conflict = si("mode", "configure", "Twilight", check=False)
    assert conflict.returncode == 1
    assert "TCS in use by mode Night" in conflict.stderr.decode()

    restarted = out(si("mode", "restart", "ESW.night"))
    assert "ESW.night of mode Night restarted" in restarted
    shut = out(si("mode", "shutdown", "Night"))
    assert "Night shut down" in shut and "now Configurable" in shut
    assert "Available" in out(si("resources"))
