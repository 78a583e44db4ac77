"""The Observations and Resources pages without a worker: who may do what, the editor's
refusals and what the pages say of each mode. Configure itself is tested end to end in
tests/sequences/test_modes.py and tests/e2e/test_modes_pages.py."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry
from sequences.models import ConfiguredMode, ObservingModesConfig

pytestmark = pytest.mark.django_db

CONFIG = """modes:
  Night:
    sequencers:
      - {prefix: ESW.night, script: darknight}
    resources: [IRIS, TCS]
  Twilight:
    sequencers:
      - {prefix: TCS.twilight, script: no-such-script}
    resources: [TCS]
"""
HTMX = {"HTTP_HX_REQUEST": "true"}


def test_only_admins_edit_the_configuration(clients):
    for role in ("viewer", "operator"):
        response = clients[role].post("/observations/config/", {"source": CONFIG}, **HTMX)
        assert response.status_code == 403, role
        assert "it needs admin" in response.content.decode()
    assert not ObservingModesConfig.objects.exists()
    assert 'name="source"' not in clients["operator"].get("/observations/").content.decode()
    assert 'name="source"' in clients["admin"].get("/observations/").content.decode()


def test_viewers_may_not_configure_shut_down_or_restart(clients):
    for path in (
        "/observations/Night/configure/",
        "/observations/Night/shutdown/",
        "/observations/sequencer/ESW.night/restart/",
    ):
        response = clients["viewer"].post(path, **HTMX)
        assert response.status_code == 403, path
        assert "it needs operator" in response.content.decode()


def test_a_bad_configuration_is_refused_in_the_editor_and_changes_nothing(clients):
    assert clients["admin"].post("/observations/config/", {"source": CONFIG}).status_code == 302
    stored = ObservingModesConfig.objects.get()
    bad = "modes:\n  Night:\n    sequencers:\n      - {script: x}\n    colour: red\n"
    response = clients["admin"].post("/observations/config/", {"source": bad}, **HTMX)
    assert response.status_code == 422
    text = response.content.decode()
    assert "modes.Night.sequencers[0].prefix: missing" in text
    assert "modes.Night.colour: unknown key" in text
    assert ObservingModesConfig.objects.get().source == stored.source
    assert AuditEntry.objects.filter(action="modes.config", outcome="refused").exists()


def test_the_pages_say_each_modes_status_and_each_resources_use(clients, users):
    clients["admin"].post("/observations/config/", {"source": CONFIG})
    html = clients["viewer"].get("/observations/").content.decode()
    assert "Night" in html and "Configurable" in html
    assert "missing scripts: no-such-script for TCS.twilight" in html
    ConfiguredMode.objects.create(name="Night", resources=["IRIS", "TCS"], sequencers=[])
    html = clients["viewer"].get("/observations/").content.decode()
    assert "s-configured" in html
    assert "TCS in use by mode Night" in html
    html = clients["viewer"].get("/resources/").content.decode()
    assert 'id="res-IRIS"' in html and "In use" in html and "2 of 2 in use" in html
    assert 'href="/observations/"' in html and 'href="/resources/"' in html


def test_a_configured_mode_left_out_of_a_new_configuration_keeps_its_resources(clients):
    from sequences import modes

    clients["admin"].post("/observations/config/", {"source": CONFIG})
    ConfiguredMode.objects.create(name="Night", resources=["IRIS", "TCS"], sequencers=[])
    only_twilight = "modes:\n  Twilight:\n    sequencers: [{prefix: TCS.t, script: x}]\n"
    clients["admin"].post("/observations/config/", {"source": only_twilight})
    listed = {m["name"]: m for m in modes.list_modes()}
    assert listed["Night"]["status"] == "Configured"
    assert listed["Night"]["inConfig"] is False
    assert listed["Twilight"]["status"] == "NonConfigurable"
    assert {r["name"]: r["mode"] for r in modes.resources()} == {"IRIS": "Night", "TCS": "Night"}
    html = clients["viewer"].get("/observations/").content.decode()
    assert "No longer in the configuration" in html
