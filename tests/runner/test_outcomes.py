"""Outcomes through a real hub (daphne + Celery worker + real children), issue 17 item 1: an
instance that completed, failed, was stopped (its stop handler ran, or the timeout hit) or
killed gets that outcome and who ended it in the API, the right badge on its page and in the
list, a list filter that finds it, and an audit entry that says how it ended."""

from __future__ import annotations

import contextlib
import re

import httpx
import pytest

from tests.packaging import python_package, upload
from tests.runner.test_instances_api import info, start, wait_ended

pytestmark = pytest.mark.django_db(transaction=True)

SEQUENCE = """
import asyncio, os, signal, time

async def run(context, input, mode="finish"):
    if mode == "oom":  # as the kernel's OOM killer does: SIGKILL that nobody at the hub sent
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "fail":
        raise RuntimeError("on purpose")
    if mode == "slow-stop":
        context.set_stop_handler(lambda: time.sleep(30))
    else:
        context.set_stop_handler(lambda: print("cleaned up", flush=True))
    if mode == "finish":
        return "done"
    print("waiting", flush=True)
    await asyncio.sleep(600)
"""


def page_client(url: str, username: str, password: str) -> httpx.Client:
    """A browser-like session on the live hub, logged in through the login form."""
    client = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
    form = client.get("/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    answer = client.post(
        "/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
    )
    assert answer.status_code == 200 and "/login/" not in str(answer.url), answer.text[:500]
    return client


def badge(html: str, iid: str | None = None) -> tuple[str, str]:
    """(data-outcome, the word shown) of the first outcome badge (in the row of `iid`)."""
    if iid is not None:
        row = re.search(rf'<tr id="row-{re.escape(iid)}">(.*?)</tr>', html, re.S)
        assert row is not None, f"no row for {iid}"
        html = row[1]
    found = re.search(
        r'<span class="badge[^"]* o-(\w+)"[^>]*data-outcome="(\w+)"[^>]*>(\w+)<', html
    )
    assert found is not None, html[:2000]
    assert found[1] == found[2]  # the colour class and the data agree
    return found[2], found[3]


def wait_running(api: httpx.Client, iid: str) -> None:
    """Until its stop handler is set: it prints "waiting" after (stdout follows until the end)."""
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=20) as response:
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if b"waiting" in seen:
                return
    raise AssertionError(f"{iid} ended before it waited: {info(api, iid)}")


def test_each_ending_gets_its_outcome_badge_filter_and_audit(hub, admin_api, operator_api, people):
    from accounts.models import AuditEntry

    seq = upload(admin_api, python_package(SEQUENCE))
    done = start(admin_api, seq, ["finish"])
    failed = start(admin_api, seq, ["fail"])
    stopped, killed, overran = (start(admin_api, seq, [m]) for m in ("wait", "wait", "slow-stop"))
    for iid in (stopped, killed, overran):
        wait_running(admin_api, iid)

    # The operator stops one (its stop handler runs), kills one, and stops one whose stop
    # handler overruns the timeout.
    answer = operator_api.post(f"/instance/{stopped}/_stop", json={"timeout": 5000})
    assert answer.status_code == 202 and answer.json()["outcome"] == "stopped", answer.text
    assert operator_api.post(f"/instance/{killed}/_kill", json={}).status_code == 202
    assert operator_api.post(f"/instance/{overran}/_stop", json={"timeout": 300}).status_code
    operator = people["operator"].username

    want = {
        done: ("completed", "sequence", None, 0, "Instance completed"),
        failed: ("failed", "sequence", None, 23, None),
        stopped: ("stopped", "user", operator, 138, "Instance stopped"),
        killed: ("killed", "user", operator, 137, "Instance killed"),
        overran: ("stopped", "timeout", operator, 137, "Instance stopped: killed after"),
    }
    for iid, (outcome, kind, user, code, reason) in want.items():
        data = wait_ended(admin_api, iid)
        assert data["outcome"] == outcome, data
        assert data["endedBy"]["kind"] == kind and data["endedBy"]["user"] == user, data
        # terminated stays as STH has it: exit code and reason.
        assert data["terminated"]["exitcode"] == code, data
        if reason:
            assert data["terminated"]["reason"].startswith(reason), data
    listed = {i["id"]: i for i in admin_api.get("/instances").json()}
    assert {iid: listed[iid]["outcome"] for iid in want} == {iid: w[0] for iid, w in want.items()}
    assert info(admin_api, killed)["endedBy"]["text"] == f"killed at {operator}'s request"

    # The audit entries of the requests say how each ended.
    entries = {(e.action, e.target): e.detail for e in AuditEntry.objects.filter(target__in=want)}
    assert entries[("instance.stop", stopped)]["ended"] == "stopped"
    assert entries[("instance.kill", killed)]["ended"] == "killed"
    assert entries[("instance.stop", overran)]["ended"] == "stopped"

    # The pages show the same, as a badge of its own colour and word, and filter by it.
    admin = people["admin"]
    with contextlib.closing(page_client(hub.url, admin.username, admin.password)) as browser:
        for iid, (outcome, *_rest) in want.items():
            html = browser.get(f"/instances/{iid}/").text
            assert badge(html) == (outcome, outcome)
        page = browser.get(f"/instances/{killed}/").text
        assert f"killed at {operator}&#x27;s request" in page
        rows = browser.get("/instances/").text
        for iid, (outcome, *_rest) in want.items():
            assert badge(rows, iid) == (outcome, outcome)
        only_killed = browser.get("/instances/?outcome=killed").text
        assert f'id="row-{killed}"' in only_killed
        assert not any(f'id="row-{iid}"' in only_killed for iid in want if iid != killed)
        assert '<option value="killed" selected>' in only_killed
        only_stopped = browser.get("/instances/?outcome=stopped").text
        assert f'id="row-{stopped}"' in only_stopped and f'id="row-{overran}"' in only_stopped
        assert f'id="row-{killed}"' not in only_stopped
        # An outcome the hub does not know filters nothing rather than failing.
        assert f'id="row-{done}"' in browser.get("/instances/?outcome=exploded").text
        overview = browser.get("/").text
        assert f"/instances/{failed}/" in overview and 'data-outcome="failed"' in overview


def test_a_sigkill_nobody_asked_for_is_a_failure_by_signal(hub, admin_api):
    """The OOM killer's SIGKILL (here the sequence's own) is not "killed" at someone's request:
    it fails, ended by a signal, and says what probably happened."""
    seq = upload(admin_api, python_package(SEQUENCE))
    iid = start(admin_api, seq, ["oom"])
    data = wait_ended(admin_api, iid)
    assert data["status"] == "errored" and data["outcome"] == "failed", data
    assert data["endedBy"]["kind"] == "signal" and data["endedBy"]["user"] is None, data
    assert data["terminated"]["exitcode"] == 137, data
    assert "SIGKILL" in data["terminated"]["reason"], data
    assert "out of memory?" in data["terminated"]["reason"], data


async def test_an_instances_changes_of_one_moment_reach_its_page_in_one_notice():
    """A short run's "running" and its end, told the instance's group within
    INSTANCE_NOTIFY_SECONDS, are one message with the latest of each field; a later change is
    a message of its own."""
    import asyncio
    import uuid

    from channels.layers import get_channel_layer

    from runner.outcomes import INSTANCE_NOTIFY_SECONDS, Notifier
    from sequences import notices

    layer = get_channel_layer()
    iid = f"notify-{uuid.uuid4().hex[:8]}"
    channel = await layer.new_channel()
    await layer.group_add(notices.instance_group(iid), channel)
    try:
        notifier = Notifier(asyncio.get_running_loop())
        notifier.changed(iid, status="running")
        notifier.changed(iid, status="completed", exitcode=0, reason="Instance completed")
        first = await asyncio.wait_for(layer.receive(channel), 5)
        assert first == {
            "type": notices.INSTANCE_CHANGED,
            "id": iid,
            "status": "completed",
            "exitcode": 0,
            "reason": "Instance completed",
        }
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), INSTANCE_NOTIFY_SECONDS * 10)
        notifier.changed(iid, status="killing")
        second = await asyncio.wait_for(layer.receive(channel), 5)
        assert second["status"] == "killing" and "exitcode" not in second
    finally:
        await layer.group_discard(notices.instance_group(iid), channel)
