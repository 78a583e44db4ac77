"""The web against a hostile client or a hostile value in Redis, on a real daphne.

- X-Forwarded-For counts only from HUB_TRUSTED_PROXIES: rotating it does not buy password
  guesses, and failures sent "from" a victim's address do not lock the victim out.
- A pickle planted under the login limit's cache key is data, not code (the cache is JSON).
- A web told to use a Redis or database reachable without credentials says so in its log.

Clients choose their source address among 127.0.0.0/8 (every one of them is this machine), so
"another machine" is 127.0.0.2 talking to a web on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from dashboard.processes import stop_process
from dashboard.views.auth import _attempts_key
from tests.conftest import free_port, start_web
from tests.faults.conftest import needs_root, start, wait_ended
from tests.packaging import python_package, upload

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "right-password"


@pytest.fixture
def web(tmp_path) -> Iterator:
    """Start a web process (no worker: logging in needs none) with extra settings."""
    started = []

    def make(**env: str) -> str:
        folder = tmp_path / f"web-{len(started)}"
        folder.mkdir()
        handle = start_web(folder, free_port(), HUB_LOGIN_ATTEMPTS="3", **env)
        started.append(handle)
        return f"http://127.0.0.1:{handle.port}"

    make.started = started
    yield make
    for handle in started:
        stop_process(handle.proc)


@pytest.fixture
def user(django_user_model) -> str:
    # Hashed with the hub's own hasher, not the test process's PASSWORD_HASHERS: a web refuses
    # a hash it has no hasher for (MD5, which tests/dashboard uses) as a wrong password.
    name = f"target-{uuid.uuid4().hex[:6]}"
    hasher = PBKDF2PasswordHasher()
    django_user_model.objects.create(username=name, password=hasher.encode(PASSWORD, hasher.salt()))
    return name


def browser(base: str, source: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=base, timeout=30, transport=transport)


def log_in(client: httpx.Client, name: str, password: str, forwarded: str = "") -> int:
    page = client.get("/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = client.post(
        "/login/",
        data={"username": name, "password": password, "csrfmiddlewaretoken": token},
        headers=headers,
    )
    return response.status_code


def refused_why(web, name: str) -> str:
    """What a failed right-password log-in leaves to go on: the stored hash's algorithm, the
    database the web was given, and the web's log."""
    from django.contrib.auth.models import User

    from tests.conftest import database_url

    stored = User.objects.filter(username=name).values_list("password", flat=True).first()
    algorithm = (stored or "no such user").split("$")[0]
    return f"hash {algorithm}, database {database_url()}\n{web.started[-1].output()[-3000:]}"


def test_rotating_x_forwarded_for_does_not_bypass_the_login_limit(web, user):
    base = web()
    with browser(base) as attacker:
        guesses = [log_in(attacker, user, "wrong", f"203.0.113.{n}") for n in range(1, 6)]
        assert guesses == [401, 401, 401, 429, 429]
        # Even the right password, from yet another made-up address.
        assert log_in(attacker, user, PASSWORD, "203.0.113.99") == 429


def test_failures_forged_with_a_victims_address_do_not_lock_the_victim(web, user):
    base = web()
    with browser(base, "127.0.0.1") as attacker:
        tries = [log_in(attacker, user, "wrong", "127.0.0.2") for _ in range(4)]
        assert tries == [401, 401, 401, 429]  # the attacker locked itself out
    with browser(base, "127.0.0.2") as victim:
        assert log_in(victim, user, PASSWORD) == 302, refused_why(web, user)


def test_a_trusted_proxy_forwarded_for_is_believed(web, user):
    base = web(HUB_TRUSTED_PROXIES="127.0.0.1")
    with browser(base, "127.0.0.1") as proxy:
        # One client behind the proxy guesses; the proxy appends the address it saw.
        tries = [log_in(proxy, user, "wrong", "10.9.9.9, 198.51.100.7") for _ in range(4)]
        assert tries == [401, 401, 401, 429]
        # The left part was written by the client: changing it changes nothing.
        assert log_in(proxy, user, PASSWORD, "10.1.1.1, 198.51.100.7") == 429
        # Another client behind the same proxy is not locked out.
        assert log_in(proxy, user, PASSWORD, "198.51.100.8") == 302, refused_why(web, user)
    with browser(base, "127.0.0.2") as direct:
        # Not a trusted proxy: its header is ignored, and its own address is not locked.
        assert log_in(direct, user, PASSWORD, "198.51.100.7") == 302, refused_why(web, user)


GUESSER = """
import http.cookiejar, json, re, urllib.error, urllib.parse, urllib.request

def run(context, input, port, name):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{port}/login/"
    answers = []
    for _ in range(5):
        page = opener.open(base, timeout=10).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
        body = urllib.parse.urlencode(
            {"username": name, "password": "a guess", "csrfmiddlewaretoken": token}
        ).encode()
        try:
            answers.append(opener.open(base, body, timeout=10).status)
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)
    return json.dumps(answers)
"""


@needs_root
def test_a_sequence_cannot_lock_an_operator_on_the_same_machine_out(private_hub, user):
    """Sequence code reaches the web from 127.0.0.1, as an operator's browser on that machine
    does. Its guesses count against its own user id (the kernel's owner of its socket), so it
    locks out only itself."""
    hub = private_hub(web_env={"HUB_LOGIN_ATTEMPTS": "3"})
    seq = upload(hub.api, python_package(GUESSER))
    iid = start(hub.api, seq, {"args": [hub.web.port, user]})
    answers = json.loads(hub.api.get(f"/instance/{iid}/output", timeout=60).text)
    assert wait_ended(hub.api, iid)["status"] == "completed"
    assert answers == [401, 401, 401, 429, 429]  # the sequence locked itself out
    with browser(f"http://127.0.0.1:{hub.web.port}", "127.0.0.1") as operator:
        assert log_in(operator, user, PASSWORD) == 302


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_planted_under_the_login_limit_key_is_not_run(web, user, tmp_path):
    """Issue 13, attack 1: a sequence wrote a pickle where the web reads its login counter."""
    from django.core.cache import cache

    base = web()
    marker = tmp_path / "pwned"
    # This client is on the web's machine: its attempts count under its user id too.
    key = cache.make_key(_attempts_key(user, f"127.0.0.1 uid {os.getuid()}"))
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(key, pickle.dumps(Payload(str(marker))), ex=60)
    try:
        with browser(base) as attacker:
            # Refused (the counter is not one the hub wrote), not run, not a server error.
            assert log_in(attacker, user, PASSWORD) == 429
        assert not marker.exists()
    finally:
        client.delete(key)
        client.close()


def test_the_web_logs_a_redis_reachable_without_a_password(web):
    assert "@" not in settings.REDIS_URL  # the suite's Redis has no password
    # Without the sandbox nothing closes its port to children. (With it, the workers close
    # the port and say so in their rows: dashboard.exposure.worker_warnings.)
    web(HUB_SANDBOX="false")
    text = web.started[0].output()
    assert "takes commands without a password" in text
    assert "Set a password in REDIS_URL" in text
