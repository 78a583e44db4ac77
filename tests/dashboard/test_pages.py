"""Console pages: who may see and do what, and that forms do what they say."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from html import unescape

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from tests.dashboard.conftest import PASSWORD
from tests.packaging import package_bytes, python_package

pytestmark = pytest.mark.django_db


def read_pages(sequence, instance) -> list[str]:
    return [
        "/",
        "/sequences/",
        f"/sequences/{sequence.id}/",
        "/instances/",
        "/instances/?status=completed",
        f"/instances/{instance.id}/",
        f"/instances/{instance.id}/search/?stream=stdout&q=line",
        f"/instances/{instance.id}/log/stdout/earlier/?at=2:0",
        f"/instances/{instance.id}/log/stdout/download/",
        "/sequencers/",
        "/components/",
        "/observations/",
        "/resources/",
        "/audit/",
        "/tokens/",
    ]


# -- reading ---------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_login(clients, sequence, ended_instance):
    for url in read_pages(sequence, ended_instance):
        response = clients["anonymous"].get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next=/"), url


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_reads_every_page(clients, role, sequence, ended_instance):
    for url in read_pages(sequence, ended_instance):
        response = clients[role].get(url)
        assert response.status_code == 200, (url, response.content[:300])


@override_settings(HUB_ANONYMOUS_ROLE="viewer")
def test_the_anonymous_role_lets_strangers_read(clients, sequence, ended_instance):
    assert clients["anonymous"].get("/instances/").status_code == 200
    # Acting needs more than the anonymous role: log in first.
    response = clients["anonymous"].post(f"/instances/{ended_instance.id}/kill/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_pages_carry_no_inline_script_or_style(clients, sequence, ended_instance):
    """The CSP forbids them: they would silently not work in a browser."""
    for url in read_pages(sequence, ended_instance):
        if "download" in url:
            continue
        html = clients["admin"].get(url).content.decode()
        assert " style=" not in html, url
        assert not re.search(r"<script(?![^>]*\ssrc=)", html), url
        assert not re.search(r"\son[a-z]+=", html), url


def test_the_csp_header_is_strict(clients):
    csp = clients["viewer"].get("/")["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_unknown_objects_answer_404(clients):
    assert clients["viewer"].get("/sequences/nope/").status_code == 404
    assert clients["viewer"].get("/instances/nope/").status_code == 404
    assert clients["viewer"].get("/sequencers/nope/").status_code == 404


def test_the_instance_page_renders_colours_and_escapes_html(clients, ended_instance):
    html = clients["viewer"].get(f"/instances/{ended_instance.id}/").content.decode()
    assert '<span class="ansi31">red line</span>' in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "line 2" in html  # a line split across chunks is whole
    assert f'ws-connect="/ws/instances/{ended_instance.id}/"' in html


def test_download_returns_the_raw_bytes(clients, ended_instance):
    response = clients["viewer"].get(f"/instances/{ended_instance.id}/log/stdout/download/")
    body = b"".join(response.streaming_content)
    assert body == b"line 1\nline 2\n\x1b[31mred line\x1b[0m\n<b>not bold</b>\nlast"
    assert "attachment" in response["Content-Disposition"]


# Searches run on threads of their own (dashboard/search.py), with connections of their own:
# the rows must be committed for them to see.
@pytest.mark.django_db(transaction=True)
def test_search_looks_through_the_whole_stream(clients, ended_instance):
    response = clients["viewer"].get(
        f"/instances/{ended_instance.id}/search/?stream=stdout&q=LINE", HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert "3 lines of stdout" in html
    assert '<span class="ln">3</span>' in html


def test_load_earlier_returns_the_lines_before_a_place(clients, ended_instance):
    response = clients["viewer"].get(
        f"/instances/{ended_instance.id}/log/stdout/earlier/?at=1:2", HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert 'data-at="0:0">line 1<' in html
    assert 'data-at="0:7">line 2<' in html
    assert "red line" not in html
    assert "start of stdout" in html  # nothing earlier: the button says so


def test_the_rows_partial_is_only_the_rows_and_the_address_follows(clients, ended_instance):
    rows = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "rows"}
    response = clients["viewer"].get("/instances/?status=completed", **rows)
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="rows"')
    assert ended_instance.id in html
    assert "<html" not in html
    # The address bar takes the query, so a reload or a shared link shows this list.
    assert response["HX-Push-Url"] == "/instances/?status=completed"
    empty = clients["viewer"].get("/instances/?status=running", **rows)
    assert ended_instance.id not in empty.content.decode()
    # A reload of the pushed address: the whole page, with the filter chosen.
    page = clients["viewer"].get("/instances/?status=completed").content.decode()
    assert '<option value="completed" selected>' in page and ended_instance.id in page


def test_the_audit_log_pages_by_keyset(clients, users):
    from accounts.models import AuditEntry

    AuditEntry.objects.bulk_create(
        AuditEntry(actor="bot", action="instance.kill", target=f"t-{n:03d}") for n in range(150)
    )
    first = clients["viewer"].get("/audit/?actor=bot").content.decode()
    targets = re.findall(r">(t-\d{3})<", first)
    assert len(targets) == 100
    nxt = unescape(re.search(r'href="([^"]+)" hx-get="[^"]+" [^>]*data-page="next"', first)[1])
    second = clients["viewer"].get("/audit/" + nxt).content.decode()
    rest = re.findall(r">(t-\d{3})<", second)
    assert len(rest) == 50 and not set(rest) & set(targets)
    assert 'data-page="next"' not in second


def _many_instances(sequence, count: int) -> list[str]:
    """`count` ended instances, one a second apart, the newest first in the returned ids."""
    from sequences.models import Instance

    start = timezone.now() - timedelta(hours=1)
    made = Instance.objects.bulk_create(
        Instance(sequence=sequence, sequence_name=sequence.name, status="completed")
        for _ in range(count)
    )
    for n, row in enumerate(made):
        Instance.objects.filter(pk=row.pk).update(created=start + timedelta(seconds=n))
    return [row.pk for row in reversed(made)]


def test_the_instance_list_pages_by_keyset_with_its_filters_in_the_links(clients, sequence):
    ids = _many_instances(sequence, 230)
    viewer = clients["viewer"]

    def shown(html: str) -> list[str]:
        return re.findall(r'<tr id="row-([^"]+)"', html)

    first = viewer.get("/instances/?status=completed").content.decode()
    assert shown(first) == ids[:100]
    assert 'data-page="prev"' not in first and 'data-page="first"' not in first
    nxt = unescape(re.search(r'href="([^"]+)" hx-get="[^"]+" [^>]*data-page="next"', first)[1])
    assert "status=completed" in nxt and "next=" in nxt
    second = viewer.get("/instances/" + nxt).content.decode()
    assert shown(second) == ids[100:200]
    nxt = unescape(re.search(r'href="([^"]+)" hx-get="[^"]+" [^>]*data-page="next"', second)[1])
    third = viewer.get("/instances/" + nxt).content.decode()
    assert shown(third) == ids[200:] and 'data-page="next"' not in third
    back = unescape(re.search(r'href="([^"]+)" hx-get="[^"]+" [^>]*data-page="prev"', third)[1])
    assert shown(viewer.get("/instances/" + back).content.decode()) == ids[100:200]
    # Oldest first, searched by the start of an id, and a cursor the hub did not make.
    oldest = viewer.get("/instances/?order=oldest").content.decode()
    assert shown(oldest) == ids[::-1][:100]
    assert shown(viewer.get(f"/instances/?q={ids[7][:12]}").content.decode()) == [ids[7]]
    assert shown(viewer.get("/instances/?next=garbage").content.decode()) == ids[:100]
    # The socket of the page follows the same query.
    assert "/ws/instances/?status=completed&amp;next=" in second


# -- logging in ------------------------------------------------------------------------------


def test_login_and_logout(users):
    client = Client()
    name = users["viewer"].username
    response = client.post("/login/", {"username": name, "password": PASSWORD, "next": "/audit/"})
    assert response.status_code == 302 and response["Location"] == "/audit/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_login_refuses_foreign_next_urls(users):
    client = Client()
    response = client.post(
        "/login/",
        {"username": users["viewer"].username, "password": PASSWORD, "next": "https://evil.test/"},
    )
    assert response["Location"] == "/"


@override_settings(HUB_LOGIN_ATTEMPTS=3)
def test_login_is_refused_after_too_many_failures(db):
    from django.contrib.auth.models import User

    name = f"victim-{uuid.uuid4().hex[:6]}"
    User.objects.create_user(name, password=PASSWORD)
    client = Client()
    try:
        for _ in range(3):
            response = client.post("/login/", {"username": name, "password": "wrong"})
            assert response.status_code == 401
        response = client.post("/login/", {"username": name, "password": PASSWORD})
        assert response.status_code == 429
        assert "Too many failed log-ins" in response.content.decode()
        assert client.get("/").status_code == 302  # still not logged in
    finally:
        from dashboard.views.auth import _attempts_key

        cache.delete(_attempts_key(name, "127.0.0.1"))


def test_logout_needs_post(clients):
    assert clients["viewer"].get("/logout/").status_code == 405


# -- CSRF ------------------------------------------------------------------------------------


def test_forms_need_the_csrf_token(users, ended_instance):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["admin"])
    for url in [
        f"/instances/{ended_instance.id}/kill/",
        "/tokens/new/",
        "/components/new/",
        "/sequences/upload/",
        "/logout/",
    ]:
        assert client.post(url, {"name": "x"}).status_code == 403, url
    page = client.get("/tokens/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert (
        client.post("/tokens/new/", {"name": "x", "csrfmiddlewaretoken": token}).status_code == 302
    )


# -- sequences -------------------------------------------------------------------------------


def upload(client: Client, data: bytes, name: str = "pkg.tar.gz"):
    return client.post("/sequences/upload/", {"package": SimpleUploadedFile(name, data)})


def test_admins_upload_packages_through_the_form(clients):
    from sequences.models import Sequence

    response = upload(clients["admin"], python_package("def run(c, i):\n    return 1\n"))
    assert response.status_code == 302
    seq = Sequence.objects.get()
    assert response["Location"] == f"/sequences/{seq.id}/"
    page = clients["admin"].get(response["Location"]).content.decode()
    assert "Uploaded test-seq" in page
    assert "main.py" in page and "&quot;engines&quot;" in page


def test_a_bad_package_is_refused_with_the_reason(clients):
    from accounts.models import AuditEntry
    from sequences.models import Sequence

    data = package_bytes({"other.py": "x = 1"})
    response = upload(clients["admin"], data)
    assert response.status_code == 302
    page = clients["admin"].get(response["Location"]).content.decode()
    assert "was refused" in page and "main.py" in page
    assert Sequence.objects.count() == 0
    assert AuditEntry.objects.filter(action="sequence.upload", outcome="refused").exists()
    response = upload(clients["admin"], b"not a tarball at all")
    page = clients["admin"].get(response["Location"]).content.decode()
    assert "gzip" in page


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_admins_upload_and_delete(clients, role, sequence):
    assert upload(clients[role], python_package("x = 1\n")).status_code == 403
    assert clients[role].post(f"/sequences/{sequence.id}/delete/").status_code == 403


def test_delete_refuses_while_instances_run_unless_forced(clients, sequence):
    from sequences.models import Instance, Sequence

    Instance.objects.create(sequence=sequence, status="completed")
    response = clients["admin"].post(f"/sequences/{sequence.id}/delete/")
    assert response.status_code == 302 and response["Location"] == "/sequences/"
    assert not Sequence.objects.filter(pk=sequence.id).exists()


def test_delete_with_a_live_instance_needs_force(clients, sequence):
    from sequences.models import Instance, Sequence

    Instance.objects.create(sequence=sequence, status="running")
    response = clients["admin"].post(f"/sequences/{sequence.id}/delete/", follow=True)
    html = unescape(response.content.decode())
    # The API's refusal names its header; the console's names the form's checkbox.
    assert "has 1 running instance(s): tick “force: kill running instances first”" in html
    assert "x-seq-kill-inst" not in html
    assert Sequence.objects.filter(pk=sequence.id).exists()


def test_the_start_form_explains_bad_input(clients, sequence):
    url = f"/sequences/{sequence.id}/start/"
    response = clients["operator"].post(url, {"args_mode": "json", "args_json": "[1, 2"})
    assert response.status_code == 422
    assert "Args are not valid JSON" in response.content.decode()
    response = clients["operator"].post(url, {"args_mode": "json", "args_json": '{"a": 1}'})
    assert "args must be a JSON array" in response.content.decode()
    response = clients["operator"].post(url, {"arg": ["x"], "app_config": "[1]"})
    assert "appConfig must be a JSON object" in response.content.decode()
    assert clients["viewer"].post(url, {"arg": ["x"]}).status_code == 403


def test_argument_fields_keep_json_types():
    from django.http import QueryDict

    from dashboard.forms import StartForm

    data = QueryDict(mutable=True)
    data.setlist("arg", ["42", "hello", '"42"', "true", ""])
    data["app_config"] = '{"k": [1]}'
    form = StartForm(data)
    assert form.is_valid(), form.errors
    assert form.start_request.args == [42, "hello", "42", True]
    assert form.start_request.app_config == {"k": [1]}


def test_the_start_form_takes_placement_and_a_restart_policy():
    from django.http import QueryDict

    from dashboard.forms import StartForm

    data = QueryDict(mutable=True)
    data.update({"labels": "gpu, zone=a", "worker": "node7", "restart_policy": "on-failure"})
    data.update({"restart_max": "5", "restart_backoff": "0.5"})
    form = StartForm(data)
    assert form.is_valid(), form.errors
    req = form.start_request
    assert req.placement.labels == ("gpu", "zone=a") and req.placement.worker == "node7"
    assert (req.restart.policy, req.restart.max, req.restart.backoff) == ("on-failure", 5, 0.5)
    plain = StartForm(QueryDict("restart_policy=never&restart_max=5"))
    assert plain.is_valid(), plain.errors
    assert plain.start_request.restart.policy == "never" and not plain.start_request.placement


def test_a_bad_placement_or_restart_is_refused_beside_its_field(clients, sequence):
    from sequences.models import Instance

    url = f"/sequences/{sequence.id}/start/"
    bad = {"labels": "gpu!!", "restart_policy": "always", "restart_max": "500"}
    response = clients["operator"].post(url, {"arg": ["x"], **bad})
    html = unescape(response.content.decode())
    assert response.status_code == 422
    assert "placement.labels[0] 'gpu!!' is not a label" in html, html
    assert Instance.objects.filter(sequence=sequence).count() == 0
    response = clients["operator"].post(url, {"restart_policy": "always", "restart_max": "500"})
    html = unescape(response.content.decode())
    assert response.status_code == 422 and "restart.max" in html
    # Beside its field: the open "Placement and restarts" section keeps what was typed.
    assert '<details class="start-more" open>' in html and 'value="500"' in html


# -- instance actions ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["input", "event", "stop", "kill"])
def test_instance_actions_need_an_operator(clients, ended_instance, action):
    url = f"/instances/{ended_instance.id}/{action}/"
    assert clients["viewer"].post(url, {"text": "x", "name": "e"}).status_code == 403
    assert clients["anonymous"].post(url).status_code == 302


@pytest.mark.parametrize("action", ["input", "event", "stop", "kill"])
def test_actions_on_an_ended_instance_say_it_is_not_running(clients, ended_instance, action):
    url = f"/instances/{ended_instance.id}/{action}/"
    data = {"text": "x", "name": "e", "stream": "input", "timeout": "100"}
    response = clients["operator"].post(url, data, HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert "is not running" in response.content.decode()
    # Without JavaScript: a message on the instance page.
    response = clients["operator"].post(url, data, follow=True)
    assert "is not running" in response.content.decode()


def test_an_event_needs_a_name(clients, ended_instance):
    response = clients["operator"].post(
        f"/instances/{ended_instance.id}/event/", {"name": ""}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 400 and "name" in response.content.decode()


# -- tokens and audit ------------------------------------------------------------------------


def test_a_token_is_shown_once_and_works_until_revoked(clients, users):
    from accounts.models import ApiToken

    response = clients["viewer"].post("/tokens/new/", {"name": "laptop"}, follow=True)
    html = response.content.decode()
    raw = re.search(r"(hub_[A-Za-z0-9_\-]+)", html).group(1)
    assert "copy it now" in html
    again = clients["viewer"].get("/tokens/").content.decode()
    assert raw not in again and "laptop" in again
    api = Client()
    assert api.get("/api/v1/sequences", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    token = ApiToken.objects.get(name="laptop")
    assert (
        "never"
        not in clients["viewer"].get("/tokens/").content.decode().split("<td>laptop</td>")[1][:400]
    )
    clients["viewer"].post(f"/tokens/{token.id}/revoke/")
    assert api.get("/api/v1/sequences", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


def test_people_see_only_their_own_tokens_but_admins_see_all(clients, users):
    from accounts.models import ApiToken

    mine, _ = ApiToken.issue(users["operator"], "operator-token")
    assert "operator-token" not in clients["viewer"].get("/tokens/").content.decode()
    assert "operator-token" in clients["admin"].get("/tokens/").content.decode()
    clients["viewer"].post(f"/tokens/{mine.id}/revoke/")
    mine.refresh_from_db()
    assert mine.revoked is None
    clients["admin"].post(f"/tokens/{mine.id}/revoke/")
    mine.refresh_from_db()
    assert mine.revoked is not None


def test_the_audit_log_filters(clients, users):
    from accounts.access import audit

    # Targets are matched as whole table cells: a bare "i1" also turns up inside the page's
    # random CSRF token now and then.
    s1, i1 = '<td class="mono small">seq-s1</td>', '<td class="mono small">inst-i1</td>'
    audit(users["admin"], "sequence.upload", "seq-s1")
    audit(users["operator"], "instance.kill", "inst-i1", outcome="refused")
    html = clients["viewer"].get("/audit/?action=instance.").content.decode()
    assert "instance.kill" in html and "sequence.upload</td>" not in html
    html = clients["viewer"].get(
        "/audit/?outcome=refused", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="rows"
    )
    assert html["HX-Push-Url"] == "/audit/?outcome=refused"
    assert i1 in html.content.decode() and s1 not in html.content.decode()
    assert "<html" not in html.content.decode()
    html = clients["viewer"].get(f"/audit/?actor={users['admin'].username}").content.decode()
    assert s1 in html and i1 not in html


# -- components and sequencers ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the refused duplicate rolls back an insert
def test_admins_create_components_and_bad_names_are_explained(clients):
    from sequences.models import SequenceComponent

    response = clients["admin"].post("/components/new/", {"name": "ESW.primary"}, follow=True)
    assert "Created sequence component ESW.primary" in response.content.decode()
    assert SequenceComponent.objects.filter(name="ESW.primary").exists()
    response = clients["admin"].post(
        "/components/new/", {"name": "no dots"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 400 and "must look like" in response.content.decode()
    response = clients["admin"].post(
        "/components/new/", {"name": "ESW.primary"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 409
    assert clients["operator"].post("/components/new/", {"name": "ESW.x"}).status_code == 403


def test_unloading_an_idle_component_is_ok(clients):
    from sequences.models import SequenceComponent

    SequenceComponent.objects.create(name="ESW.spare")
    response = clients["admin"].post("/components/ESW.spare/unload-script/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Ok." in response.content.decode()
    response = clients["admin"].post("/components/ESW.spare/restart/", HTTP_HX_REQUEST="true")
    assert "Refused" in response.content.decode()


@pytest.fixture
def killed_sequencer(db, sequence):
    from sequences.models import Sequencer, Step

    row = Sequencer.objects.create(
        prefix="ESW.test", script=sequence, state="Killed", has_step_list=True
    )
    began = timezone.now() - timedelta(seconds=5)
    Step.objects.create(
        sequencer=row,
        position=0,
        step_id="s1",
        type="Setup",
        command="move",
        status="Success",
        started=began,
        ended=began + timedelta(seconds=1.5),
    )
    return row


def test_the_sequencer_page_shows_steps_and_disables_refused_buttons(clients, killed_sequencer):
    html = clients["operator"].get(f"/sequencers/{killed_sequencer.id}/").content.decode()
    assert "ESW.test" in html and "<b>Setup</b> move" in html
    assert re.search(r'data-command="startSequence"[^>]*disabled', html)
    # The editor's buttons, Step and Reload too: Killed takes nothing.
    for name in ("loadSequence", "submit", "add", "replace", "stepThrough", "reload"):
        assert re.search(rf'data-command="{name}"[^>]*disabled', html), name
    assert "took 1.5 s" in html
    # By prefix as well as by id.
    assert clients["viewer"].get("/sequencers/ESW.test/").status_code == 200


def test_a_refused_sequencer_command_is_explained(clients, killed_sequencer):
    url = f"/sequencers/{killed_sequencer.id}/command/goOnline/"
    response = clients["operator"].post(url, HTTP_HX_REQUEST="true")
    text = response.content.decode()
    assert response.status_code == 409
    assert "Sequencer can not accept &#x27;GoOnline&#x27; message in &#x27;Killed&#x27;" in text
    assert clients["viewer"].post(url).status_code == 403


def test_step_commands_check_their_input(clients, killed_sequencer):
    base = f"/sequencers/{killed_sequencer.id}/command/"
    response = clients["operator"].post(base + "add/", {"steps": "[{"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and "not valid JSON" in response.content.decode()
    response = clients["operator"].post(base + "add/", {}, HTTP_HX_REQUEST="true")
    assert "give the steps" in response.content.decode()
    response = clients["operator"].post(
        base + "insertAfter/",
        {"steps": json.dumps([{"type": "Setup", "command": "x"}])},
        HTTP_HX_REQUEST="true",
    )
    assert "choose the step" in response.content.decode()
    assert clients["operator"].post(base + "explode/", HTTP_HX_REQUEST="true").status_code == 404


def test_a_step_list_file_is_read(clients, killed_sequencer):
    steps = json.dumps({"commands": [{"type": "Observe", "command": "expose"}]}).encode()
    response = clients["operator"].post(
        f"/sequencers/{killed_sequencer.id}/command/loadSequence/",
        {"steps_file": SimpleUploadedFile("steps.json", steps)},
        HTTP_HX_REQUEST="true",
    )
    # Read and sent: the Killed sequencer refuses it by the table, not for the file.
    assert "LoadSequence" in response.content.decode()


def test_args_typed_only_as_json_are_taken_as_json():
    from django.http import QueryDict

    from dashboard.forms import StartForm

    data = QueryDict(mutable=True)
    data.setlist("arg", ["", ""])
    data["args_mode"] = "fields"
    data["args_json"] = '["a", 2]'
    form = StartForm(data)
    assert form.is_valid(), form.errors
    assert form.start_request.args == ["a", 2]


def test_the_instance_page_links_a_restart_both_ways(clients, ended_instance):
    from sequences.models import Instance

    restart = Instance.objects.create(
        sequence=ended_instance.sequence,
        sequence_name=ended_instance.sequence_name,
        args=ended_instance.args,
        restarted_from=ended_instance,
    )
    old = clients["viewer"].get(f"/instances/{ended_instance.id}/").content.decode()
    assert "Restarted as" in old and f'href="/instances/{restart.id}/"' in old
    new = clients["viewer"].get(f"/instances/{restart.id}/").content.decode()
    assert "Restarted from" in new and f'href="/instances/{ended_instance.id}/"' in new
    assert "Restarted as" not in new


def test_pages_show_a_workers_labels_and_an_instances_placement(clients, ended_instance):
    from django.utils import timezone

    from sequences.models import Instance, Worker

    Worker.objects.create(
        name="w-gpu", hostname="h", pid=1, capacity=4, last_seen=timezone.now(), labels=["gpu"]
    )
    overview = clients["viewer"].get("/").content.decode()
    assert re.search(r"w-gpu\s*<code[^>]*>gpu</code>", overview), overview
    Instance.objects.filter(pk=ended_instance.pk).update(placement={"labels": ["gpu"]})
    page = clients["viewer"].get(f"/instances/{ended_instance.id}/").content.decode()
    assert "Placement" in page and "gpu" in page


# -- topics ----------------------------------------------------------------------------------

HOSTILE = (
    b"<script>alert(1)</script>\n"
    b"\x1b]8;;https://evil.example/\x07click me\x1b]8;;\x07\n"
    b"\x1b[31mred\x1b[0m <img src=x onerror=alert(2)>\n"
)


@pytest.fixture
def topic(db):
    """A topic holding a hostile payload, with a live instance that publishes to it and one
    that reads it."""
    from asgiref.sync import async_to_sync

    from sequences import topics
    from sequences.models import Instance

    name = f"t-{uuid.uuid4().hex[:8]}"
    async_to_sync(topics.ensure)(name, "text/plain")
    async_to_sync(topics.publish)(name, [HOSTILE])
    producer = Instance.objects.create(
        sequence_name="<b>maker</b>", status="running", output_topic=name
    )
    consumer = Instance.objects.create(sequence_name="eater", status="running", input_topic=name)
    yield {"name": name, "producer": producer, "consumer": consumer}
    if async_to_sync(topics.get)(name) is not None:
        async_to_sync(topics.delete)(name)


def test_topic_pages_need_a_viewer(clients, topic):
    for url in ("/topics/", f"/topics/{topic['name']}/"):
        response = clients["anonymous"].get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
        for role in ("viewer", "operator", "admin"):
            assert clients[role].get(url).status_code == 200, (role, url)
    assert clients["viewer"].get("/topics/nope-nope/").status_code == 404
    assert clients["viewer"].get("/topics/bad%20name%3Cb%3E/").status_code == 404


def test_the_topics_page_links_producers_and_consumers_and_draws_the_pipeline(clients, topic):
    html = clients["viewer"].get("/topics/").content.decode()
    name = topic["name"]
    assert f'href="/topics/{name}/"' in html
    assert f'href="/instances/{topic["producer"].id}/"' in html
    assert f'href="/instances/{topic["consumer"].id}/"' in html
    assert "text/plain" in html
    assert 'ws-connect="/ws/topics/"' in html
    # The picture: producer → topic → consumer, each node a link, names escaped.
    assert "<svg" in html and html.count('class="flow"') >= 2
    assert "&lt;b&gt;maker&lt;/b&gt;" in html and "<b>maker</b>" not in html
    assert 'href="/topics/"' in html  # the nav link


def test_the_tail_escapes_a_hostile_payload(clients, topic):
    html = clients["viewer"].get(f"/topics/{topic['name']}/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "evil.example" not in html and "click me" in html  # OSC 8 link dropped, text kept
    assert '<span class="ansi31">red</span>' in html
    assert "\x1b" not in html
    assert f'ws-connect="/ws/topics/{topic["name"]}/"' in html
    assert " style=" not in html and not re.search(r"\son[a-z]+=\"", html)


def test_deleting_a_topic_follows_the_api_role(clients, topic):
    """docs/api.md: operators create, delete and send to topics."""
    from asgiref.sync import async_to_sync

    from sequences import topics

    url = f"/topics/{topic['name']}/delete/"
    assert clients["viewer"].post(url).status_code == 403
    assert "Delete" not in clients["viewer"].get("/topics/").content.decode().split("<main")[1]
    response = clients["operator"].post(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Deleted topic" in response.content.decode()
    assert async_to_sync(topics.get)(topic["name"]) is None
    assert clients["operator"].post(url, HTTP_HX_REQUEST="true").status_code == 404


# -- lists and repeats (issue 17, item 4) ---------------------------------------------------


def test_sequences_are_listed_newest_first(clients, users):
    from sequences import catalog

    made = []
    for n in range(3):
        code = f"def run(context, input, *args):\n    print({n})\n"
        made.append(catalog.add_sequence(catalog.spool_upload([python_package(code)]), None))
    html = clients["viewer"].get("/sequences/").content.decode()
    places = [html.index(seq.id) for seq in made]
    assert places == sorted(places, reverse=True)


def test_sequences_are_grouped_by_name_with_their_versions_and_page(clients, users):
    from sequences import catalog
    from sequences.models import Sequence

    def upload(name: str, version: str) -> Sequence:
        meta = {"name": name, "version": version, "main": "main.py", "engines": {"python3": "3"}}
        code = {"main.py": f"def run(context, input, *args):\n    print({version!r})\n"}
        return catalog.add_sequence(catalog.spool_upload([package_bytes(code, meta)]), None)

    a1, b1, a2 = upload("alpha", "1.0.0"), upload("beta", "1.0.0"), upload("alpha", "2.0.0")
    html = clients["viewer"].get("/sequences/").content.decode()
    # alpha's newest upload is the newest of all: its group first, 2.0.0 in the row, 1.0.0
    # folded under it; beta after.
    assert html.index('data-group="alpha"') < html.index('data-group="beta"')
    assert "+1 older" in html and "1 older version of alpha" in html
    assert html.index(a2.id) < html.index(a1.id) < html.index(b1.id)
    searched = clients["viewer"].get("/sequences/?q=bet").content.decode()
    assert 'data-group="beta"' in searched and 'data-group="alpha"' not in searched
    for n in range(55):
        upload(f"many-{n:02d}", "0.1.0")
    first = clients["viewer"].get("/sequences/").content.decode()
    assert first.count("data-group=") == 50
    nxt = unescape(re.search(r'href="([^"]+)" data-page="next"', first)[1])
    rest = clients["viewer"].get("/sequences/" + nxt).content.decode()
    assert rest.count("data-group=") == 7  # 57 names in all
    assert 'data-group="alpha"' in rest and 'data-group="many-54"' not in rest


def test_an_upload_identical_to_a_stored_one_is_kept_and_named_a_duplicate(clients, users):
    from accounts.models import ApiToken

    data = python_package("def run(context, input, *args):\n    print('twin')\n")
    api = Client()
    _, raw = ApiToken.issue(users["admin"], "t")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    first = api.post("/api/v1/sequence", data, "application/octet-stream", **auth).json()
    assert "duplicateOf" not in first
    second = api.post("/api/v1/sequence", data, "application/octet-stream", **auth).json()
    assert second["duplicateOf"] == [first["id"]] and second["id"] != first["id"]
    upload = SimpleUploadedFile("twin.tar.gz", data, "application/gzip")
    page = clients["admin"].post("/sequences/upload/", {"package": upload}, follow=True)
    html = page.content.decode()
    assert f"identical (same sha256) to sequence {first['id']}" in html and "and 1 more" in html


def test_run_again_fills_the_start_form_with_the_instances_args_and_app_config(
    clients, ended_instance
):
    ended_instance.app_config = {"k": [1, 2]}
    ended_instance.save()
    page = clients["operator"].get(f"/instances/{ended_instance.id}/").content.decode()
    link = f"/sequences/{ended_instance.sequence_id}/?again={ended_instance.id}#start"
    assert link in unescape(page)
    form = unescape(clients["operator"].get(link.split("#")[0]).content.decode())
    assert '>["a", 1]</textarea>' in form and '>{"k": [1, 2]}</textarea>' in form
    assert 'value="json" checked' in form
    assert '<details class="start-more">' in form  # nothing to show: closed


def test_run_again_keeps_placement_and_restart_policy(clients, ended_instance):
    ended_instance.placement = {"labels": ["gpu", "zone=a"], "worker": "node7"}
    ended_instance.restart_policy, ended_instance.restart_max = "on-failure", 4
    ended_instance.restart_backoff = 2.5
    ended_instance.save()
    url = f"/sequences/{ended_instance.sequence_id}/?again={ended_instance.id}"
    form = unescape(clients["operator"].get(url).content.decode())
    assert '<details class="start-more" open>' in form
    assert 'name="labels" value="gpu zone=a"' in form and 'name="worker" value="node7"' in form
    assert '<option value="on-failure" selected>' in form
    assert 'name="restart_max" type="number" min="0" max="100" value="4"' in form
    assert 'value="2.5"' in form


def test_step_through_and_reload_are_offered_only_where_they_apply():
    from dashboard.views.sequencers import _page_commands

    def step(status: str, bp: bool = False) -> dict:
        return {"status": status, "hasBreakpoint": bp}

    running = {"resume", "pause", "add"}
    paused = [step("Success"), step("Pending", True), step("Pending")]
    assert _page_commands(running, paused) == {"stepThrough": True, "reload": False}
    going = [step("Success"), step("InFlight"), step("Pending")]
    assert _page_commands(running, going)["stepThrough"] is False
    done = [step("Success"), step("Failure")]
    assert _page_commands({"loadSequence", "goOffline"}, done) == {
        "stepThrough": False,
        "reload": True,
    }
    assert _page_commands({"loadSequence"}, [])["reload"] is False
