"""The example night of examples/observatory (issue 18 item 4), end to end: the three packages
packed with the client's pack code and uploaded through the API, three sequencers on the real
worker (each its own child process), the night's step list submitted to the top-level one, and
what an operator would see afterwards: runs, step lists, stdout, transition histories, links."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from typing import Any

import httpx
import pytest
import yaml

from client.pack import pack, pack_to_bytes, read_package_json
from sequences.packages import inspect_package
from tests.client.conftest import make_si
from tests.conftest import ROOT, wait_for
from tests.packaging import upload
from tests.sequences import sequencer_kit
from tests.sequences.sequencer_kit import Kit, unique

kit = sequencer_kit.kit  # the fixture

OBSERVATORY = ROOT / "examples" / "observatory"
PACKAGES = {"top": "observatory-top", "iris": "observatory-iris", "tcs": "observatory-tcs"}
NIGHT = json.loads((OBSERVATORY / "night.json").read_text(encoding="utf-8"))


# -- the files, without a hub -----------------------------------------------------------------


@pytest.mark.parametrize(("folder", "name"), sorted(PACKAGES.items()))
def test_each_script_packs_with_the_clients_pack_code(folder, name, tmp_path):
    directory = OBSERVATORY / folder
    assert read_package_json(directory)["name"] == name
    result = pack(directory, tmp_path / f"{name}.tar.gz")
    assert sorted(result.files) == ["main.py", "package.json"]
    # The hub's own check of an upload accepts it as a Python package.
    with open(result.path, "rb") as packed:
        info = inspect_package(packed, max_files=100, max_bytes=1 << 20)
    assert info.config["name"] == name and info.language == "python" and info.main == "main.py"
    assert pack_to_bytes(directory)  # what `si seq send DIR` uploads


def test_modes_yaml_is_the_mode_configuration_of_the_night():
    modes = yaml.safe_load((OBSERVATORY / "modes.yaml").read_text(encoding="utf-8"))
    assert modes == {
        "modes": {
            "DarkNight": {
                "sequencers": [
                    {"prefix": "ESW.darknight", "script": "observatory-top"},
                    {"prefix": "IRIS.darknight", "script": "observatory-iris"},
                    {"prefix": "TCS.darknight", "script": "observatory-tcs"},
                ],
                "resources": ["IRIS", "TCS"],
            }
        }
    }
    # Every script it names is one of the packages beside it.
    named = {s["script"] for s in modes["modes"]["DarkNight"]["sequencers"]}
    assert named == set(PACKAGES.values())


def test_the_night_step_list_uses_only_the_top_scripts_commands():
    code = (OBSERVATORY / "top" / "main.py").read_text(encoding="utf-8")
    handled = set(re.findall(r'@sequencer\.on_(?:setup|observe)\("([^"]+)"\)', code))
    assert {step["command"] for step in NIGHT["commands"]} == handled


# -- the night, on the real worker ---------------------------------------------------------------


def stdout(k: Kit, sid: str, stream: str = "stdout") -> list[str]:
    """What the sequencer's process printed so far (its instance's stdout, or `stream`)."""
    iid = k.get(sid)["instance"]
    data = b""
    with k.operator.stream("GET", f"/instance/{iid}/{stream}", timeout=1) as response:
        try:
            for chunk in response.iter_bytes():
                data += chunk
        except httpx.ReadTimeout:  # the stream follows a live process: what came is all
            pass
    return data.decode().splitlines()


def load(k: Kit, package: str, prefix: str) -> dict[str, Any]:
    comp = k.component()
    response = k.admin.post(
        f"/component/{comp}/load-script", json={"sequence": package, "prefix": prefix}
    )
    assert response.status_code == 200, response.text
    body = response.json()["sequencer"]
    k.instances.append(body["instance"])
    return body


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_the_example_night(kit):
    mode = unique("night")  # ESW.nightXXXX drives IRIS.nightXXXX and TCS.nightXXXX
    ids = {folder: upload(kit.admin, pack_to_bytes(OBSERVATORY / folder)) for folder in PACKAGES}
    iris = load(kit, ids["iris"], f"IRIS.{mode}")
    tcs = load(kit, ids["tcs"], f"TCS.{mode}")
    esw = load(kit, ids["top"], f"ESW.{mode}")

    run_id = kit.send(esw["id"], "submit", NIGHT)["runId"]
    final = kit.operator.get(
        f"/sequencer/{esw['id']}/queryFinal/{run_id}", params={"timeout": 120}
    ).json()

    # The top-level run completed, every step of it, the failing observation included.
    steps = kit.get(esw["id"])["stepList"]
    assert final == {"type": "Completed", "runId": run_id}, steps
    assert [s["status"] for s in steps] == ["Success"] * len(NIGHT["commands"])
    step_of = {s["command"]: s["id"] for s in steps}  # the last step of each command
    prepare, rest = step_of["prepare"], step_of["offline-online"]
    bad_observe = steps[3]["id"]

    # The failing IRIS step is in the top script's output as IRIS's own Error message.
    out = stdout(kit, esw["id"])
    failure = re.compile(
        rf"^ESW: IRIS\.{mode}: StepId: (\S+), CommandName: configure, reason: ValueError: "
        r"filter 'Q' is not in the wheel \(it holds Z, Y, J, H, K\) "
        r"\(reported; the night goes on\)$"
    )
    reported = [m for m in map(failure.match, out) if m]
    assert len(reported) == 1, out
    assert "ESW: night over: 4 exposures, 1 error from the subsystems reported" in out
    assert f"ESW: IRIS.{mode} is Offline" in out and f"ESW: IRIS.{mode} is Idle again" in out
    # ... and in its log, as a warning.
    log = stdout(kit, esw["id"], "log")
    assert any(f"subsystem error: IRIS.{mode}: StepId: " in line for line in log), log
    iris_out = stdout(kit, iris["id"])
    assert sum(line.startswith("IRIS: exposure ") for line in iris_out) == 4
    assert "IRIS: going offline, detector to standby" in iris_out
    assert "IRIS: back online, detector ready" in iris_out
    assert "IRIS: filter K" in iris_out  # the night went on after the failure
    tcs_out = stdout(kit, tcs["id"])
    assert tcs_out.count("TCS: stop, ending the tracking") == 3  # once per observation
    assert "TCS: parking" in tcs_out

    # The subsystems' histories name ESW (its run and step) where a user would be.
    for sub in (iris, tcs):
        history = kit.transitions(sub["id"])
        # Every command but the admin's LoadScript came from ESW (stepFinished is the run's own).
        commanded = [t for t in history if t["command"] not in ("LoadScript", "stepFinished")]
        by_esw = [t for t in history if t["upstream"]]
        assert by_esw, history
        for t in by_esw:
            assert t["user"] is None
            assert t["upstream"]["prefix"] == esw["prefix"] and t["upstream"]["id"] == esw["id"]
            assert t["upstream"]["runId"] == run_id
        assert commanded and all(t["upstream"] for t in commanded), commanded
    iris_history = kit.transitions(iris["id"])
    offline = [t for t in iris_history if t["command"] in ("goOffline", "goOnline")]
    # (each command shows as two transitions: into Processing while its handler runs, out)
    assert [(t["command"], t["from"], t["to"]) for t in offline] == [
        ("goOffline", "Idle", "Processing"),
        ("goOffline", "Processing", "Offline"),
        ("goOnline", "Offline", "Processing"),
        ("goOnline", "Processing", "Idle"),
    ]
    assert {t["upstream"]["step"] for t in offline} == {rest}
    # The failing configure came from the fourth step of the night.
    iris_submits = [t for t in iris_history if t["command"] == "submit"]
    assert bad_observe in {t["upstream"]["step"] for t in iris_submits}

    # Setup ran both subsystems at once: each was submitted before the other's run ended.
    def first_run(history: list[dict[str, Any]]) -> tuple[str, str]:
        start = next(t for t in history if t["command"] == "submit")
        rest_of = history[history.index(start) + 1 :]
        end = next(t for t in rest_of if t["from"] == "Running" and t["to"] == "Idle")
        assert start["upstream"]["step"] == prepare
        return start["time"], end["time"]

    (iris_start, iris_end) = first_run(iris_history)
    (tcs_start, tcs_end) = first_run(kit.transitions(tcs["id"]))
    assert iris_start < tcs_end and tcs_start < iris_end

    # TCS was stopped by ESW after each observation.
    history = kit.transitions(tcs["id"])
    stops = [t for t in history if t["command"] == "stop" and t["from"] == "Running"]
    assert len(stops) == 3 and all(t["upstream"]["prefix"] == esw["prefix"] for t in stops)

    # The audit log has ESW's commands, as ESW (no user), via a sequencer.
    from accounts.models import AuditEntry

    entries = AuditEntry.objects.filter(actor=esw["prefix"], target=iris["id"])
    wanted = {"sequencer.submitAndWait", "sequencer.goOffline", "sequencer.goOnline"}
    wait_for(  # written just after the answer went back to ESW
        lambda: wanted <= set(entries.values_list("action", flat=True)), what="the audit entries"
    )
    assert all(e.via == "sequencer" and e.user is None for e in entries)

    # The links an operator sees on the pages: ESW above, IRIS and TCS below, all Idle.
    links = kit.operator.get(f"/sequencer/{esw['id']}/links").json()
    assert sorted((d["prefix"], d["state"]) for d in links["downstreams"]) == [
        (f"IRIS.{mode}", "Idle"),
        (f"TCS.{mode}", "Idle"),
    ]
    for sub in (iris, tcs):
        up = kit.operator.get(f"/sequencer/{sub['id']}/links").json()["upstream"]
        assert up["prefix"] == esw["prefix"]
        assert kit.get(sub["id"])["state"] == "Idle"


# -- the README's commands, as written ---------------------------------------------------------

MARKER = "<!-- night-flow:"


def readme_flow() -> list[list[str]]:
    """The `$ si ...` lines of the marked console block of the README."""
    text = (OBSERVATORY / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "examples/observatory/README.md lost its night-flow block"
    return [shlex.split(line[2:]) for line in block.group(1).splitlines() if line.startswith("$ ")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_the_readme_runs_the_night_as_written(kit, hub, people, tmp_path):
    # From a copy of the examples, so what `si seq pack` writes lands in the test's directory.
    shutil.copytree(OBSERVATORY, tmp_path / "examples" / "observatory")
    si = make_si(tmp_path, hub.api, people["admin"].token)
    outputs: dict[str, str] = {}
    run_id = None
    for command in readme_flow():
        assert command[0] == "si", command
        args = [run_id if a == "RUN_ID" else a for a in command[1:]]
        if args[:2] == ["component", "create"]:
            kit.components.append(args[2])  # unloaded at the end of the test
        printed = si(*args, timeout=180).stdout.decode()
        outputs[" ".join(command[1:3])] = printed
        if args[:2] == ["sequencer", "submit"]:
            found = re.fullmatch(r"Started run (\S+)\n", printed)
            assert found, printed
            run_id = found.group(1)
    assert outputs["sequencer query-final"] == f"Completed run {run_id}\n"
    info = outputs["sequencer info"]
    assert "ESW.darknight" in info and info.count("Success") == len(NIGHT["commands"])
    links = outputs["sequencer links"].splitlines()
    assert any(re.fullmatch(r"downstream\s+IRIS\.darknight\s+Idle\s*", line) for line in links)
    assert any(re.fullmatch(r"downstream\s+TCS\.darknight\s+Idle\s*", line) for line in links)
    history = outputs["sequencer transitions"].splitlines()
    assert history[0].split()[-1] == "BY"
    offline = [line for line in history if " goOffline " in line]
    assert offline and all(line.rstrip().endswith("ESW.darknight") for line in offline)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_aborting_the_night_aborts_the_subsystem_that_is_running(kit):
    """The operator aborts ESW mid-observation: its abort handler aborts IRIS and TCS (the
    downstreams are not aborted for it), IRIS drops its pending exposures, TCS ends its tracking,
    the night's pending steps go, and all three are Idle and ready again."""
    mode = unique("night")
    ids = {folder: upload(kit.admin, pack_to_bytes(OBSERVATORY / folder)) for folder in PACKAGES}
    iris = load(kit, ids["iris"], f"IRIS.{mode}")
    tcs = load(kit, ids["tcs"], f"TCS.{mode}")
    esw = load(kit, ids["top"], f"ESW.{mode}")
    night = {
        "commands": [
            {"type": "Observe", "command": "observe", "params": {"exposures": 6, "exposure": 1}},
            {"type": "Setup", "command": "end-night"},
        ]
    }
    run_id = kit.send(esw["id"], "submit", night)["runId"]
    kit.wait(iris["id"], lambda s: s["state"] == "Running", what="IRIS exposing")
    assert kit.send(esw["id"], "abortSequence") == {"type": "Ok"}
    final = kit.operator.get(
        f"/sequencer/{esw['id']}/queryFinal/{run_id}", params={"timeout": 30}
    ).json()
    assert final["type"] in ("Completed", "Error"), final
    assert [s["command"] for s in kit.get(esw["id"])["stepList"]] == ["observe"]
    for sub in (iris, tcs):
        aborts = [t for t in kit.transitions(sub["id"]) if t["command"] == "abortSequence"]
        assert aborts and aborts[0]["upstream"]["prefix"] == esw["prefix"]
    iris_out = stdout(kit, iris["id"])
    assert "IRIS: aborting after this step" in iris_out
    assert sum(line.startswith("IRIS: exposure ") for line in iris_out) < 6
    assert "TCS: abort, ending the tracking" in stdout(kit, tcs["id"])
    esw_out = stdout(kit, esw["id"])
    assert any(line.endswith("ended early: the night was aborted") for line in esw_out), esw_out
    for seq in (esw, iris, tcs):
        kit.wait_state(seq["id"], "Idle")
    # The next night starts from scratch.
    again = kit.send(esw["id"], "submit", {"commands": [night["commands"][1]]})["runId"]
    final = kit.operator.get(
        f"/sequencer/{esw['id']}/queryFinal/{again}", params={"timeout": 30}
    ).json()
    assert final == {"type": "Completed", "runId": again}


@pytest.mark.django_db(transaction=True)
def test_a_night_without_its_subsystems_fails_its_setup_naming_them(kit):
    """Only ESW loaded: the setup step fails with the hub's NOT_FOUND for the subsystem, the
    night's run ends in Error saying so, and ESW is Idle, ready once they are up."""
    mode = unique("night")
    esw = load(kit, upload(kit.admin, pack_to_bytes(OBSERVATORY / "top")), f"ESW.{mode}")
    run_id = kit.send(esw["id"], "submit", NIGHT)["runId"]
    final = kit.operator.get(
        f"/sequencer/{esw['id']}/queryFinal/{run_id}", params={"timeout": 30}
    ).json()
    assert final["type"] == "Error", final
    assert "CommandName: prepare" in final["msg"] and f".{mode}" in final["msg"]
    assert "SequencerError" in final["msg"]
    steps = kit.get(esw["id"])["stepList"]
    assert [s["status"] for s in steps] == ["Failure"] + ["Pending"] * (len(steps) - 1)
    assert kit.get(esw["id"])["state"] == "Idle"
