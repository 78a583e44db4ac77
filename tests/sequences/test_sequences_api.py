"""Sequence packages through the API: upload, list, inspect, overwrite, delete, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.conftest import wait_for
from tests.packaging import python_package, upload
from tests.sequences.badpackages import corpus

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = "def run(context, input):\n    return 'hello'\n"
FOREVER = "import time\ndef run(context, input):\n    time.sleep(300)\n"


def stored_files() -> set[str]:
    root = settings.HUB_DATA_DIR / "storage" / "packages"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def temp_files() -> set[str]:
    root = settings.HUB_DATA_DIR / "tmp"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_upload_list_and_describe_a_sequence(admin_api):
    seq = upload(admin_api, python_package(HELLO, **{"lib/util.py": "X = 1\n"}))
    listed = {s["id"]: s for s in admin_api.get("/sequences").json()}
    assert listed[seq]["name"] == "test-seq"
    assert listed[seq]["config"]["main"] == "main.py"
    assert listed[seq]["instances"] == []
    detail = admin_api.get(f"/sequence/{seq}").json()
    assert detail["language"] == "python"
    assert {f["path"] for f in detail["files"]} == {"package.json", "main.py", "lib/util.py"}
    assert len(detail["sha256"]) == 64
    assert admin_api.get(f"/sequence/{seq}/instances").json() == []


def test_upload_accepts_a_missing_content_type(admin_api):
    response = admin_api.post(
        "/sequence", content=python_package(HELLO), headers={"Content-Type": ""}
    )
    assert response.status_code == 200
    assert response.json()["id"]


def test_overwrite_makes_a_new_id_and_keeps_the_old(admin_api):
    old = upload(admin_api, python_package(HELLO))
    response = admin_api.put(
        f"/sequence/{old}", content=python_package("def run(c, i):\n  return 2\n")
    )
    assert response.status_code == 200
    new = response.json()["id"]
    assert new != old
    assert admin_api.get(f"/sequence/{new}").status_code == 200


def test_unknown_sequence_answers_404_with_a_code(admin_api):
    response = admin_api.get("/sequence/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "Sequence nope not found", "code": "NOT_FOUND"}


def test_delete_removes_the_row_and_the_stored_package(admin_api):
    seq = upload(admin_api, python_package(HELLO + "# unique delete\n"))
    sha = admin_api.get(f"/sequence/{seq}").json()["sha256"]
    assert f"{sha}.tar.gz" in stored_files()
    response = admin_api.delete(f"/sequence/{seq}")
    assert response.status_code == 200 and response.json() == {"id": seq}
    assert admin_api.get(f"/sequence/{seq}").status_code == 404
    assert f"{sha}.tar.gz" not in stored_files()


def _running(api: httpx.Client, seq: str) -> str:
    iid = api.post(f"/sequence/{seq}/start", json={}).json()["id"]
    wait_for(lambda: api.get(f"/instance/{iid}").json()["status"] == "running", what="running")
    return iid


def test_delete_refuses_while_instances_run(admin_api):
    seq = upload(admin_api, python_package(FOREVER))
    iid = _running(admin_api, seq)
    response = admin_api.delete(f"/sequence/{seq}")
    assert response.status_code == 409
    assert response.json()["code"] == "SEQUENCE_IN_USE"
    assert admin_api.get(f"/sequence/{seq}").status_code == 200
    admin_api.post(f"/instance/{iid}/_kill", json={})


@pytest.mark.parametrize("force", ["header", "query"])
def test_forced_delete_kills_the_instances_first(admin_api, force):
    seq = upload(admin_api, python_package(FOREVER))
    iid = _running(admin_api, seq)
    if force == "header":
        response = admin_api.delete(f"/sequence/{seq}", headers={"x-seq-kill-inst": "true"})
    else:
        response = admin_api.delete(f"/sequence/{seq}?force=1")
    assert response.status_code == 200
    data = admin_api.get(f"/instance/{iid}").json()
    assert data["status"] == "completed"
    assert data["terminated"]["exitcode"] == 137


@pytest.mark.parametrize("bad", corpus(), ids=str)
def test_every_bad_package_is_refused_with_422_and_leaves_nothing(admin_api, tmp_path, bad):
    path: Path = bad.write(tmp_path)
    before_files, before_tmp = stored_files(), temp_files()
    before_rows = len(admin_api.get("/sequences").json())
    with path.open("rb") as fh:
        response = admin_api.post(
            "/sequence", content=fh, headers={"Content-Type": "application/octet-stream"}
        )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == bad.code
    assert bad.message_contains in body["error"]
    assert stored_files() == before_files
    assert temp_files() == before_tmp
    assert len(admin_api.get("/sequences").json()) == before_rows


def test_an_upload_over_the_size_cap_answers_413(private_hub, tmp_path):
    hub = private_hub(web_env={"HUB_UPLOAD_MAX_BYTES": "1000"})
    response = hub.api.post("/sequence", content=os.urandom(5000))
    assert response.status_code == 413
    assert response.json()["code"] == "TOO_LARGE"
    assert temp_files() == set() or all(not n.startswith("upload-") for n in temp_files())
