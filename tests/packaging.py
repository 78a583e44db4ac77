"""Build sequence packages (tar.gz bytes) in tests."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from typing import Any


def package_bytes(
    files: dict[str, str | bytes], package_json: dict[str, Any] | None = None, main: str = "main.py"
) -> bytes:
    """A tar.gz with package.json (default: Python, `main`) and the given files."""
    meta = package_json or {
        "name": "test-seq",
        "version": "1.0.0",
        "main": main,
        "engines": {"python3": "3.11"},
    }
    members = {"package.json": json.dumps(meta), **files}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def python_package(code: str, **files: str | bytes) -> bytes:
    """A Python sequence whose main.py is `code` (dedented)."""
    return package_bytes({"main.py": textwrap.dedent(code), **files})


def upload(api: Any, data: bytes) -> str:
    response = api.post(
        "/sequence", content=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]
