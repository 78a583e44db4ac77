"""JavaScript sequences through the hub: the Scramjet docs' example verbatim, input, stop, kill."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import wait_for
from tests.packaging import package_bytes, upload

pytestmark = pytest.mark.django_db(transaction=True)

DOCS_EXAMPLE = """module.exports = async function* (initialNumber = 0, length = 1000) {
    for (let i = initialNumber; i < initialNumber + length; i++) yield i;
};
"""


def js_package(code: str, **extra) -> bytes:
    meta = {"name": "js-seq", "version": "1.0.0", "main": "index.js", "engines": {"node": ">=18"}}
    meta.update(extra)
    return package_bytes({"index.js": code}, package_json=meta)


def start(api: httpx.Client, seq: str, args: list | None = None) -> str:
    response = api.post(f"/sequence/{seq}/start", json={"args": args or []})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def ended(api: httpx.Client, iid: str) -> dict:
    return wait_for(
        lambda: (
            (d := api.get(f"/instance/{iid}").json())["status"] in ("completed", "errored") and d
        ),
        what="the end",
    )


def test_the_docs_example_prints_3000_to_3009(admin_api):
    seq = upload(admin_api, js_package(DOCS_EXAMPLE))
    assert admin_api.get(f"/sequence/{seq}").json()["language"] == "node"
    iid = start(admin_api, seq, [3000, 10])
    assert admin_api.get(f"/instance/{iid}/output").text.split() == [
        str(n) for n in range(3000, 3010)
    ]
    assert ended(admin_api, iid)["terminated"] == {"exitcode": 0, "reason": "Instance completed"}


def test_a_pipeline_step_returning_an_async_generator_function_streams(admin_api):
    # STH's inert-sequence-2 reference app: the first step returns the generator *function*.
    code = """module.exports = [
    async function (_stream) {
        let x = 0;
        return async function* () {
            while (++x < 5) { yield { a: x }; await new Promise((r) => setTimeout(r, 10)); }
        };
    },
    async function (stream) {
        for await (const { a } of stream) console.log({ x: a });
    },
];
"""
    iid = start(admin_api, upload(admin_api, js_package(code)))
    assert admin_api.get(f"/instance/{iid}/stdout").text.splitlines() == [
        f"{{ x: {n} }}" for n in range(1, 5)
    ]
    assert ended(admin_api, iid)["terminated"]["exitcode"] == 0


def test_input_events_and_logs_of_a_js_sequence(admin_api):
    code = """module.exports = async function* (input, prefix) {
    this.logger.info("started");
    this.emit("hello", {prefix});
    for await (const line of input) yield prefix + line;
};
"""
    iid = start(admin_api, upload(admin_api, js_package(code)), [">"])
    admin_api.post(
        f"/instance/{iid}/input", content=b"a\nb\n", headers={"Content-Type": "text/plain"}
    )
    assert admin_api.get(f"/instance/{iid}/output").content == b">a\n>b\n"
    assert admin_api.get(f"/instance/{iid}/event/hello").json() == {"prefix": ">"}
    assert (
        "started" in json.loads(admin_api.get(f"/instance/{iid}/log").text.splitlines()[0])["msg"]
    )


def test_stop_and_kill_of_a_js_sequence(admin_api):
    code = """module.exports = function () {
    this.addStopHandler(() => console.log("stopping"));
    setInterval(() => console.log("tick"), 50);
    return new Promise(() => {});
};
"""
    seq = upload(admin_api, js_package(code))
    first, second = start(admin_api, seq), start(admin_api, seq)
    for iid in (first, second):
        wait_for(
            lambda i=iid: admin_api.get(f"/instance/{i}").json()["status"] == "running",
            what="running",
        )
    admin_api.post(f"/instance/{first}/_stop", json={"timeout": 1000, "canCallKeepalive": False})
    assert ended(admin_api, first)["terminated"]["exitcode"] == 138
    assert b"stopping" in admin_api.get(f"/instance/{first}/stdout").content
    admin_api.post(f"/instance/{second}/_kill", json={})
    assert ended(admin_api, second)["terminated"]["exitcode"] == 137


def test_a_js_exception_ends_errored_with_23_and_the_stack(admin_api):
    code = "module.exports = async function () { throw new Error('kaboom'); };\n"
    iid = start(admin_api, upload(admin_api, js_package(code)))
    done = ended(admin_api, iid)
    assert done["status"] == "errored" and done["terminated"]["exitcode"] == 23
    assert b"kaboom" in admin_api.get(f"/instance/{iid}/stderr").content


def test_without_node_on_path_the_start_fails_with_a_clear_reason(private_hub):
    hub = private_hub(worker_env={"PATH": "/nonexistent"})
    seq = upload(hub.api, js_package(DOCS_EXAMPLE))
    response = hub.api.post(f"/sequence/{seq}/start", json={"args": [1, 2]})
    assert response.status_code == 400
    assert "node was not found on PATH" in response.json()["error"]
    listed = hub.api.get("/instances").json()
    mine = [i for i in listed if i["sequence"]["id"] == seq]
    assert mine and mine[0]["status"] == "errored"
    assert "node was not found" in mine[0]["terminated"]["reason"]


@pytest.mark.parametrize(
    ("main", "files"),
    [
        ("./index", {"index.js": DOCS_EXAMPLE}),
        ("lib", {"lib/package.json": json.dumps({"main": "count"}), "lib/count.js": DOCS_EXAMPLE}),
    ],
)
def test_main_named_as_node_resolves_it_runs_the_file_it_names(admin_api, main, files):
    """Issue 15, item 1: "main": "./index" (or a folder with its own package.json) runs."""
    meta = {"name": "js-seq", "version": "1.0.0", "main": main}  # no engines: Node's rule
    seq = upload(admin_api, package_bytes(files, package_json=meta))
    resolved = admin_api.get(f"/sequence/{seq}").json()
    iid = start(admin_api, seq, [5, 3])
    assert admin_api.get(f"/instance/{iid}/output").content == b"5\n6\n7\n", resolved
    assert ended(admin_api, iid)["terminated"]["exitcode"] == 0
