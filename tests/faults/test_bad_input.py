"""Bad input on every API route: 4xx with a JSON message, never a 5xx.

The routes come from the served OpenAPI document, so a new route is covered the day it lands.
Ids are filled with unknown values, then with real ones (a sequence, an ended instance, a
sequencer, a component) so bodies are checked past the lookup too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.conftest import PLAIN, start, wait_ended
from tests.packaging import python_package, upload
from tests.sequences.sequencer_kit import Kit, kit  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db(transaction=True)

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
ENDLESS = {"/log"}  # the host log never ends: only its wrong methods are tried
# Unknown in this run: topics live in Redis for their retention time, and a run before this one
# on the same Redis may have made a topic of any fixed name.
UNKNOWN = f"no-such-id-{uuid.uuid4().hex[:8]}"

# Not a JSON object at all: every route that takes a body refuses these.
MALFORMED: list[bytes] = [
    b"{",
    b'"just a string"',
    b"12",
    b"\xff\xfe\x00not utf-8",
    b"[" * 200_000,  # deeper than any JSON parser recurses
]
# Objects with wrong types: refused where the fields mean something, ignored elsewhere.
WRONG_TYPES: list[bytes] = [
    b"[]",
    b'{"args": 5, "appConfig": [], "limits": {"memory": "lots"}}',
    b'{"args": [], "limits": {"memory": 1e999}}',
    b'{"instanceId": {"no": 1}}',
    b'{"commands": 5, "id": [], "name": 7, "sequence": null, "prefix": 3}',
    b'{"commands": [{"type": "Bogus"}], "startTime": "yesterday"}',
    b'{"eventName": "", "timeout": -5, "canCallKeepalive": "maybe"}',
    b'[4001, {"timeout": "soon"}]',
    json.dumps({"args": ["x" * (2 << 20)]}).encode(),  # 2 MB of args
]
BAD_BODIES = MALFORMED + WRONG_TYPES
# Start refuses each of these with 4xx (the start body ignores keys it does not know).
BAD_STARTS: list[bytes] = [
    b"[]",
    b'{"args": 5}',
    b'{"appConfig": []}',
    b'{"limits": {"memory": "lots"}}',
    b'{"limits": {"memory": 1e999}}',
    b'{"limits": {"memory": NaN}}',
    b'{"limits": {"memory": 1}}',
    b'{"instanceId": {"no": 1}}',
    b'{"instanceId": "../../etc"}',
    json.dumps({"args": ["x" * (2 << 20)]}).encode(),
]


def assert_json_4xx(response: httpx.Response, what: str) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), (what, response.text)
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], (what, body)
    return body


@pytest.fixture
def openapi(admin_api: httpx.Client) -> dict[str, Any]:
    return admin_api.get("/openapi.json").json()


@pytest.fixture
def routes(openapi: dict[str, Any]) -> list[tuple[str, set[str]]]:
    """(path template, methods) for every route the API documents."""
    return [
        (path.removeprefix("/api/v1"), {m.upper() for m in item if m.upper() in METHODS})
        for path, item in openapi["paths"].items()
    ]


@pytest.fixture
def body_routes(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every route that documents a request body."""
    return [
        (method.upper(), path.removeprefix("/api/v1"))
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method.upper() in METHODS and "requestBody" in operation
    ]


@pytest.fixture
def real_ids(admin_api: httpx.Client, kit: Kit) -> Iterator[dict[str, str]]:  # noqa: F811
    seq = upload(admin_api, python_package(PLAIN))
    iid = start(admin_api, seq)
    wait_ended(admin_api, iid)
    sequencer = kit.load()
    yield {
        "seq_id": seq,
        "iid": iid,
        "sid": sequencer["id"],
        "name": kit.components[-1],
        "run_id": "no-such-run",
        "prefix": sequencer["prefix"],
    }


PATH_PARAMETERS = ("seq_id", "iid", "sid", "name", "run_id", "prefix")


def fill(template: str, ids: dict[str, str] | None) -> str:
    path = template
    for key in PATH_PARAMETERS:
        path = path.replace("{" + key + "}", (ids or {}).get(key, UNKNOWN))
    assert "{" not in path, f"a path parameter this test does not know: {template}"
    return path


def test_unknown_routes_answer_a_json_404(admin_api: httpx.Client):
    for method in METHODS:
        for path in ("/nope", "/", "/instance", "/instance/x/y/z/w", "/sequence/x/bogus", "/%ff"):
            response = admin_api.request(method, path)
            assert response.status_code == 404, (method, path, response.text[:200])
            assert response.json()["code"] == "NOT_FOUND"


def test_wrong_methods_answer_a_json_405_on_every_route(admin_api: httpx.Client, routes):
    for template, allowed in routes:
        path = fill(template, None)
        for method in set(METHODS) - allowed:
            response = admin_api.request(method, path, content=b"{}")
            assert response.status_code == 405, (method, path, response.text[:200])
            assert response.json()["code"] == "METHOD_NOT_ALLOWED"
            assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed


def test_unknown_ids_answer_a_json_404_on_every_route(admin_api: httpx.Client, routes):
    for template, allowed in routes:
        if "{" not in template or template.startswith("/topic/"):
            # A topic is made by its first reader or writer (as on Scramjet Transform Hub), so
            # `/topic/:name` has no unknown name to refuse (tests/sequences/test_topics_api.py).
            continue
        path = fill(template, None)
        for method in allowed:
            body = assert_json_4xx(admin_api.request(method, path, content=b"{}"), (method, path))
            assert body["code"] in {"NOT_FOUND", "INVALID_REQUEST"}, (method, path, body)


def test_malformed_bodies_answer_4xx_on_every_route_that_takes_one(
    admin_api, body_routes, real_ids
):
    assert len(body_routes) >= 15
    wrong = []
    for method, template in body_routes:
        if template.startswith("/topic/"):
            # A topic's body is data, not a document: any bytes are good data for an
            # octet-stream topic (content types are checked in tests/sequences/test_topics_api.py).
            continue
        for ids in (None, real_ids):
            path = fill(template, ids)
            for raw in BAD_BODIES:
                for ctype in ("application/json", "application/octet-stream"):
                    response = admin_api.request(
                        method, path, content=raw, headers={"Content-Type": ctype}
                    )
                    what = (method, path, raw[:40], ctype, response.status_code)
                    if raw in MALFORMED or response.status_code >= 300:
                        try:
                            assert_json_4xx(response, what)
                        except AssertionError as exc:
                            wrong.append(str(exc)[:400])
    assert not wrong, "\n".join(wrong)


def test_bad_start_bodies_are_refused(admin_api, real_ids):
    seq = real_ids["seq_id"]
    wrong = []
    for raw in MALFORMED + BAD_STARTS:
        response = admin_api.post(f"/sequence/{seq}/start", content=raw)
        try:
            body = assert_json_4xx(response, raw[:60])
            assert body["code"] in {"INVALID_CONFIG", "INVALID_REQUEST", "TOO_LARGE"}, body
        except AssertionError as exc:
            wrong.append(str(exc)[:300])
    assert not wrong, "\n".join(wrong)


def test_routes_without_a_body_ignore_junk_sent_to_them(admin_api, routes, body_routes):
    with_body = set(body_routes)
    for template, allowed in routes:
        for method in allowed & {"POST", "PUT", "DELETE"}:
            if (method, template) in with_body:
                continue
            path = fill(template, None)  # unknown ids: nothing real is shut down or deleted
            for raw in BAD_BODIES[:6]:
                response = admin_api.request(method, path, content=raw)
                assert response.status_code < 500, (method, path, response.text[:200])
                assert response.headers["content-type"].startswith("application/json")


def test_bad_query_parameters_answer_4xx_or_are_clamped(admin_api, real_ids):
    sid = real_ids["sid"]
    for query in ("limit=abc", "limit=-5", "limit=" + "9" * 40, "limit=1e3"):
        response = admin_api.get(f"/sequencer/{sid}/transitions?{query}")
        assert response.status_code < 500, (query, response.text)
        if response.status_code >= 400:
            assert_json_4xx(response, query)
    for timeout in ("abc", "nan", "inf", "-1", "1e999", "0"):
        response = admin_api.get(f"/sequencer/{sid}/queryFinal/none?timeout={timeout}", timeout=90)
        assert response.status_code < 500, (timeout, response.text)
        if response.status_code >= 400:
            assert_json_4xx(response, timeout)


def test_nul_characters_are_refused_on_every_route(admin_api, routes, body_routes):
    """PostgreSQL cannot store NUL in text: such ids and names are bad requests, not 500s."""
    for template, allowed in routes:
        if "{" not in template:
            continue
        path = template
        for key in PATH_PARAMETERS:
            path = path.replace("{" + key + "}", "%00")
        for method in allowed:
            response = admin_api.request(method, path, content=b"{}")
            assert_json_4xx(response, (method, path))
    for method, template in body_routes:
        if "{" in template:
            continue
        body = b'{"name": "\\u0000", "sequence": "\\u0000", "prefix": "\\u0000"}'
        assert_json_4xx(admin_api.request(method, template, content=body), (method, template))


def test_odd_headers_are_refused_or_ignored(admin_api, real_ids):
    seq = real_ids["seq_id"]
    odd = [
        {"Content-Length": "abc"},
        {"Content-Type": "application/json; charset=klingon"},
        {"x-end-stream": "\u00e9".encode("latin-1") * 10},
        {"Authorization": "Bearer " + "x" * 10_000},
    ]
    for headers in odd:
        try:
            response = admin_api.post(f"/sequence/{seq}/start", content=b"{", headers=headers)
        except httpx.HTTPError:
            continue  # refused at the protocol level, before any view: fine
        assert response.status_code < 500, (headers, response.text[:200])
