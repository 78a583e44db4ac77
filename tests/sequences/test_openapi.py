"""The OpenAPI document covers every route; the interactive docs load only the hub's own files."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import Hub

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED = {
    ("post", "/api/v1/sequence"),
    ("get", "/api/v1/sequences"),
    ("get", "/api/v1/sequence/{seq_id}"),
    ("put", "/api/v1/sequence/{seq_id}"),
    ("delete", "/api/v1/sequence/{seq_id}"),
    ("get", "/api/v1/sequence/{seq_id}/instances"),
    ("post", "/api/v1/sequence/{seq_id}/start"),
    ("get", "/api/v1/instances"),
    ("get", "/api/v1/instance/{iid}"),
    ("get", "/api/v1/instance/{iid}/stdout"),
    ("get", "/api/v1/instance/{iid}/output"),
    ("post", "/api/v1/instance/{iid}/input"),
    ("post", "/api/v1/instance/{iid}/_stop"),
    ("post", "/api/v1/instance/{iid}/_kill"),
    ("post", "/api/v1/instance/{iid}/_event"),
    ("get", "/api/v1/instance/{iid}/events/{name}"),
    ("get", "/api/v1/version"),
    ("get", "/api/v1/load-check"),
    ("get", "/api/v1/log"),
}


def test_openapi_lists_every_route_with_bearer_auth(hub: Hub, people):
    doc = httpx.get(hub.api + "/openapi.json", headers=people["viewer"].headers()).json()
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert found >= EXPECTED
    assert any(s.get("scheme") == "bearer" for s in doc["components"]["securitySchemes"].values())


def test_interactive_docs_use_only_local_files(hub: Hub, people):
    page = httpx.get(hub.api + "/docs", headers=people["viewer"].headers())
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for src in sources:
        assert httpx.get(hub.url + src).status_code == 200, src
