"""Helpers for sequencer tests against a live hub: packages, loading, commands, waiting."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.packaging import upload

ENDED = ("completed", "errored", "lost")
EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def example_package(name: str) -> bytes:
    """The tar.gz of `examples/<name>` (package.json at the root)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted((EXAMPLES / name).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(EXAMPLES / name)))
    return buf.getvalue()


def setup(command: str, **params: Any) -> dict[str, Any]:
    return {"type": "Setup", "command": command, "params": params}


def observe(command: str, **params: Any) -> dict[str, Any]:
    return {"type": "Observe", "command": command, "params": params}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@dataclass
class Kit:
    """One test's view of the hub: admin and operator clients, and what it loaded."""

    admin: httpx.Client
    operator: httpx.Client
    packages: dict[str, str] = field(default_factory=dict)
    components: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)

    def package(self, name: str) -> str:
        """Upload `examples/<name>` once per test; its sequence id."""
        if name not in self.packages:
            self.packages[name] = upload(self.admin, example_package(name))
        return self.packages[name]

    def component(self) -> str:
        name = unique("TST.comp")
        response = self.admin.post("/components", json={"name": name})
        assert response.status_code == 201, response.text
        self.components.append(name)
        return name

    def load(
        self, script: str = "darknight", prefix: str | None = None, component: str | None = None
    ) -> dict[str, Any]:
        """A fresh sequencer (a new component loaded with `script`); its JSON."""
        comp = component or self.component()
        response = self.admin.post(
            f"/component/{comp}/load-script",
            json={"sequence": self.package(script), "prefix": prefix or unique("TST.seq")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["type"] == "SequencerLocation"
        self.instances.append(body["sequencer"]["instance"])
        return body["sequencer"]

    def send(
        self, sid: str, command: str, body: Any = None, expect: int | None = 200
    ) -> dict[str, Any]:
        response = self.operator.post(f"/sequencer/{sid}/{command}", json=body)
        if expect is not None:
            assert response.status_code == expect, (command, response.status_code, response.text)
        return response.json()

    def get(self, sid: str) -> dict[str, Any]:
        response = self.operator.get(f"/sequencer/{sid}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, sid: str, predicate: Any, timeout: float = 15, what: str = "") -> dict:
        def check() -> dict[str, Any] | None:
            current = self.get(sid)
            return current if predicate(current) else None

        return wait_for(check, timeout=timeout, interval=0.02, what=what or "sequencer condition")

    def wait_state(self, sid: str, state: str, timeout: float = 15) -> dict[str, Any]:
        return self.wait(sid, lambda s: s["state"] == state, timeout, f"state {state}")

    def statuses(self, sid: str) -> list[str]:
        return [s["status"] for s in self.get(sid)["stepList"] or []]

    def transitions(self, sid: str) -> list[dict[str, Any]]:
        response = self.operator.get(f"/sequencer/{sid}/transitions", params={"limit": 10000})
        assert response.status_code == 200, response.text
        return response.json()

    def cleanup(self) -> None:
        """Unload every component, then wait until their processes have ended and been
        recorded, so no worker writes while the test database is emptied."""
        for comp in self.components:
            hosted = self.admin.get(f"/component/{comp}/status").json().get("sequencer")
            if hosted and hosted["instance"] not in self.instances:
                self.instances.append(hosted["instance"])
            self.admin.post(f"/component/{comp}/unload-script")
        deadline = time.monotonic() + 10
        for iid in self.instances:
            while time.monotonic() < deadline:
                info = self.admin.get(f"/instance/{iid}")
                if info.status_code != 200 or info.json()["status"] in ENDED:
                    break
                time.sleep(0.02)


@pytest.fixture
def kit(admin_api: httpx.Client, operator_api: httpx.Client) -> Iterator[Kit]:
    """Sequencer helpers; every component a test loaded is unloaded at its end."""
    k = Kit(admin_api, operator_api)
    try:
        yield k
    finally:
        k.cleanup()
