"""Pieces of issue 13 on the web's side, one by one: the client's address behind proxies, the
JSON cache, the exposure warnings, OSC 8 links in the console and `.env`'s mode."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from unittest.mock import patch

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.test import RequestFactory, override_settings

from dashboard.cache_json import JSONSerializer
from dashboard.exposure import exposure_warnings
from dashboard.logs import render_lines
from dashboard.views.common import client_ip
from tests.conftest import ROOT
from tests.dashboard.test_settings_and_runhub import clean_env

# -- the client's address ------------------------------------------------------------------


def address(peer: str, forwarded: str | None = None) -> str:
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return client_ip(RequestFactory().get("/", REMOTE_ADDR=peer, **extra))


def test_without_trusted_proxies_the_peer_is_the_client():
    assert address("192.0.2.5", "198.51.100.1") == "192.0.2.5"
    assert address("") == "unknown"


@override_settings(HUB_TRUSTED_PROXIES=["10.0.0.0/8", "::1"])
def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client():
    # The client wrote "1.1.1.1"; the proxy appended what it saw.
    assert address("10.0.0.2", "1.1.1.1, 198.51.100.7") == "198.51.100.7"
    # Two trusted proxies in a row.
    assert address("10.0.0.2", "1.1.1.1, 198.51.100.7, 10.3.3.3") == "198.51.100.7"
    assert address("::1", "2001:db8::5") == "2001:db8::5"
    assert address("::ffff:10.0.0.2", "198.51.100.7") == "198.51.100.7"
    assert address("10.0.0.2", "198.51.100.7:5123") == "198.51.100.7"
    assert address("10.0.0.2", "[2001:db8::5]:443") == "2001:db8::5"
    # No header, or only trusted hops: the origin as far as the proxies tell.
    assert address("10.0.0.2") == "10.0.0.2"
    assert address("10.0.0.2", "10.4.4.4, 10.3.3.3") == "10.4.4.4"
    # Garbage where the proxy's entry should be: the request counts under that proxy.
    assert address("10.0.0.2", "198.51.100.7, not-an-address") == "10.0.0.2"
    # A peer that is not a trusted proxy is believed about nothing.
    assert address("192.0.2.5", "198.51.100.7") == "192.0.2.5"


def test_a_bad_trusted_proxy_stops_the_hub_with_a_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=clean_env(tmp_path, HUB_TRUSTED_PROXIES="10.0.0.0/8,proxy.example"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "HUB_TRUSTED_PROXIES: 'proxy.example' is not an address" in out.stderr


# -- the cache holds JSON ------------------------------------------------------------------


def test_the_serializer_round_trips_json_and_keeps_integers_raw():
    s = JSONSerializer()
    assert s.dumps(7) == 7  # a Redis integer: INCR works on it
    for value in (True, 1.5, "12", "x", [1, "a"], {"a": [1, None]}, None):
        assert s.loads(s.dumps(value)) == value
    assert s.loads(b"7") == 7
    with pytest.raises(TypeError):
        s.dumps({1, 2})  # not JSON: refused when written, not pickled
    with pytest.raises(ValueError):
        s.loads(pickle.dumps(["anything"]))


def test_the_cache_stores_json_in_redis():
    key = "hardening-test"
    cache.set(key, {"n": 1}, 30)
    try:
        raw = redis.Redis.from_url(settings.REDIS_URL).get(cache.make_key(key))
        assert raw == b'{"n":1}'
        cache.set(key, 1, 30)
        assert cache.incr(key) == 2
        assert cache.get(key) == 2
    finally:
        cache.delete(key)


# -- exposure warnings ---------------------------------------------------------------------

SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/x/hub.sqlite3"}}
POSTGRES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "hub",
        "HOST": "127.0.0.1",
        "PASSWORD": "",
    }
}


def warnings_for(
    redis_url: str, databases=SQLITE, network="host", broker=None, sandbox=False
) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES": nothing connects here
        with override_settings(
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=broker if broker is not None else redis_url,
            DATABASES=databases,
            HUB_SANDBOX_NETWORK=network,
            HUB_SANDBOX=sandbox,
            HUB_SETTINGS_WARNINGS=[],
        ):
            return exposure_warnings()


def test_the_embedded_redis_and_sqlite_expose_nothing(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = "unix://:secret@/data/redis/redis.sock?db=0"
    assert warnings_for(url, broker="redis+socket://:secret@/data/redis/redis.sock") == []
    assert (
        warnings_for(
            "redis://:pw@10.0.0.5:6379/0", {"default": POSTGRES["default"] | {"PASSWORD": "pw"}}
        )
        == []
    )


def test_a_redis_without_a_password_is_named_with_its_fix(monkeypatch):
    (warning,) = warnings_for("redis://127.0.0.1:6379/0")
    assert "Redis at 127.0.0.1:6379 takes commands without a password" in warning
    assert "Set a password in REDIS_URL" in warning and "HUB_SANDBOX_NETWORK=isolated" in warning
    # Without network, TCP is out of reach; a Unix socket is a file, and still is not.
    assert warnings_for("redis://127.0.0.1:6379/0", network="isolated") == []
    (warning,) = warnings_for("unix:///run/redis.sock?db=0", network="isolated")
    assert "socket /run/redis.sock" in warning
    # The broker is checked too when it is set apart.
    (warning,) = warnings_for("unix://:s@/d/redis.sock", broker="redis://broker.example:6380/0")
    assert "broker.example:6380" in warning


def test_a_database_without_a_password_is_named_with_its_fix(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    url = "unix://:s@/d/redis.sock"
    (warning,) = warnings_for(url, POSTGRES)
    assert "The database (postgresql at 127.0.0.1)" in warning
    assert "Set a password in DATABASE_URL" in warning
    assert warnings_for(url, POSTGRES, network="isolated") == []
    socket_db = {"default": POSTGRES["default"] | {"HOST": "/var/run/postgresql"}}
    (warning,) = warnings_for(url, socket_db, network="isolated")
    assert "the socket in /var/run/postgresql" in warning
    monkeypatch.setenv("PGPASSWORD", "pw")
    assert warnings_for(url, POSTGRES) == []


def test_with_landlock_tcp_services_are_left_to_the_workers_reports(monkeypatch):
    """With the sandbox on and children run as user ids of their own (a root worker), the
    workers close the ports of password-less TCP services; the configuration alone then warns
    only of what Landlock cannot close (Unix sockets)."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setattr("dashboard.exposure.os.geteuid", lambda: 0)
    assert warnings_for("redis://127.0.0.1:6379/0", POSTGRES, sandbox=True) == []
    (warning,) = warnings_for("unix:///run/redis.sock?db=0", sandbox=True)
    assert "socket /run/redis.sock" in warning
    # Children sharing the worker's user id keep their ports open: warned at start.
    with override_settings(HUB_RUN_AS="none"):
        (warning,) = warnings_for("redis://127.0.0.1:6379/0", sandbox=True)
    assert "Redis at 127.0.0.1:6379 takes commands without a password" in warning
    monkeypatch.setattr("dashboard.exposure.os.geteuid", lambda: 1000)
    (redis_warning, db_warning) = warnings_for("redis://127.0.0.1:6379/0", POSTGRES, sandbox=True)
    assert "Redis at 127.0.0.1:6379" in redis_warning and "postgresql" in db_warning


@pytest.mark.django_db
def test_a_worker_without_landlock_or_with_a_port_open_is_named():
    from django.utils import timezone

    from dashboard.exposure import worker_warnings
    from sequences.models import Worker

    def worker(name: str, **sandbox) -> None:
        Worker.objects.create(
            name=name, hostname="h", pid=1, capacity=1, last_seen=timezone.now(), sandbox=sandbox
        )

    worker("good", landlock=7, closed_ports=[6379, 5432], network="host", summary="ok")
    worker("old-kernel", landlock=0, closed_ports=[], network="host", summary="no Landlock")
    worker("boxed", landlock=0, closed_ports=[], network="isolated", summary="isolated")
    worker(
        "as-root",
        landlock=7,
        closed_ports=[],
        network="isolated",
        summary="children would run as root: every start is REFUSED (HUB_RUN_AS)",
    )
    plain, secret = "redis://127.0.0.1:6379/0", "redis://:pw@127.0.0.1:6379/0"
    with override_settings(REDIS_URL=plain, CELERY_BROKER_URL=plain, DATABASES=SQLITE):
        found = worker_warnings()
    assert len(found) == 3, found
    assert "refuses every start" in next(w for w in found if "as-root" in w)
    old = next(w for w in found if "old-kernel" in w)
    assert "no Landlock" in old and "connect to Redis at 127.0.0.1:6379" in old
    assert "connect to" not in next(w for w in found if "boxed" in w)
    with override_settings(REDIS_URL=secret, CELERY_BROKER_URL=secret, DATABASES=SQLITE):
        assert all("connect to" not in w for w in worker_warnings())


@pytest.mark.django_db
def test_admins_see_the_warnings_on_the_overview(clients):
    with override_settings(
        REDIS_URL="redis://127.0.0.1:6379/0", HUB_SANDBOX_NETWORK="host", HUB_SANDBOX=False
    ):
        page = clients["admin"].get("/").content.decode()
        assert 'id="ov-exposure"' in page
        assert "takes commands without a password" in page
        for role in ("viewer", "operator"):
            assert 'id="ov-exposure"' not in clients[role].get("/").content.decode()
    with patch("dashboard.views.overview.exposure_warnings", return_value=[]):
        assert 'id="ov-exposure"' not in clients["admin"].get("/").content.decode()


# -- OSC 8 links ---------------------------------------------------------------------------


def rendered(text: str) -> str:
    return render_lines([((0, 0), text.encode())])[0].html


def test_osc8_links_are_shown_as_their_text_not_as_links():
    bel = "see \x1b]8;;javascript:alert(1)\x07the docs\x1b]8;;\x07 now"
    st = "see \x1b]8;id=7;https://evil.example/\x1b\\the docs\x1b]8;;\x1b\\ now"
    for line in (bel, st):
        html = rendered(line)
        assert html == "see the docs now", html
    # Colours still render; other OSC sequences (a window title) vanish too.
    assert rendered("\x1b]0;title\x07\x1b[31mred\x1b[0m") == '<span class="ansi31">red</span>'
    # Cut short by the end of the line or by the next escape.
    assert rendered("a \x1b]8;;http://x") == "a "
    assert "<a" not in rendered("\x1b]8;;http://x\x1b[1mbold")
    # And the visible text is escaped as any other.
    assert rendered("\x1b]8;;http://x\x07<b>hi</b>\x1b]8;;\x07") == "&lt;b&gt;hi&lt;/b&gt;"


# -- .env ----------------------------------------------------------------------------------


def test_env_file_is_closed_when_ours_and_warned_about_when_not(tmp_path, monkeypatch):
    from dashboard import settings as hub_settings
    from dashboard.data_dir import close_env_file

    def start() -> None:
        # hub_init closes it (runhub runs hub_init first), settings read it.
        close_env_file(path)
        hub_settings._read_env_file(path)

    monkeypatch.setattr(hub_settings, "HUB_SETTINGS_WARNINGS", [])
    path = tmp_path / ".env"
    path.write_text("HUB_TEST_ENV_FILE_VALUE=1\n")
    path.chmod(0o644)
    monkeypatch.delenv("HUB_TEST_ENV_FILE_VALUE", raising=False)
    start()
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.environ["HUB_TEST_ENV_FILE_VALUE"] == "1"
    assert hub_settings.HUB_SETTINGS_WARNINGS == []
    path.chmod(0o644)
    monkeypatch.setattr(os, "geteuid", lambda: 54321)  # the file is someone else's
    start()
    (warning,) = hub_settings.HUB_SETTINGS_WARNINGS
    assert "is readable by other users (mode 644)" in warning


def test_a_trusted_loopback_proxy_is_named(monkeypatch):
    with override_settings(HUB_TRUSTED_PROXIES=["127.0.0.1", "10.0.0.0/8"]):
        found = [w for w in warnings_for("unix://:s@/d/redis.sock") if "TRUSTED" in w]
        assert len(found) == 1 and "127.0.0.1" in found[0] and "10.0.0.0/8" not in found[0]
    with override_settings(HUB_TRUSTED_PROXIES=["10.0.0.1"]):
        assert warnings_for("unix://:s@/d/redis.sock") == []
