"""Settings, read only from the environment (and `.env` when present); `.env.example` lists them.

Importing them only reads: the data folder, its modes and the secrets the hub keeps for itself
are made by `manage.py hub_init` (dashboard/data_dir.py), which `make run` runs first.
"""

import ipaddress
import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from core.labels import worker_labels
from dashboard.package_storage import FOLDER_BACKEND, package_storage

BASE_DIR = Path(__file__).resolve().parent.parent

# Problems with the configuration that `dashboard.exposure` reports (runhub, the web's log and
# the overview); settings are read before logging is set up.
HUB_SETTINGS_WARNINGS: list[str] = []


def _read_env_file(path: Path) -> None:
    """`.env` holds the hub's secrets (SECRET_KEY, database and Redis passwords): `hub_init`
    closes it to other users, sequence code running as one of them included; a process that
    finds it open says so."""
    try:
        info = path.stat()
    except OSError:
        return
    if info.st_mode & 0o077:
        HUB_SETTINGS_WARNINGS.append(
            f"{path} is readable by other users (mode {info.st_mode & 0o777:o}) and holds "
            f"the hub's secrets: make it 0600 and owned by the hub's user."
        )
    environ.Env.read_env(path, overwrite=False)


env = environ.Env()
_read_env_file(BASE_DIR / ".env")


def parse_duration(value: str | int) -> int:
    """Seconds from `90`, `90s`, `15m`, `12h` or `1d`."""
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


HUB_DATA_DIR = Path(env.str("HUB_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
# The secrets this process needs and `hub_init` has not made yet (dashboard/data_dir.py).
HUB_MISSING_SECRETS: list[Path] = []


def _kept_secret(path: Path) -> str:
    """The secret `hub_init` keeps in `path`, or "" while there is none yet.

    A missing file is not an error here: `migrate` and `hub_init` itself run before there is
    one, and need none. Django refuses any use of an empty SECRET_KEY, and the web and the
    workers refuse to start without it (dashboard/apps.py): none makes a key of its own, which
    the others would not share. A file that is there but cannot be read stops every process.
    """
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ImproperlyConfigured(f"{path} cannot be read: {exc.strerror}") from None
    if not value:
        raise ImproperlyConfigured(f"{path} is empty: remove it, and `hub_init` makes another")
    return value


# A hub started with no SECRET_KEY keeps one made by `hub_init`, so sessions survive restarts.
SECRET_KEY = env.str("SECRET_KEY", default="")
SECRET_KEY_FILE = None if SECRET_KEY else HUB_DATA_DIR / "secret_key"
if SECRET_KEY_FILE is not None:
    SECRET_KEY = _kept_secret(SECRET_KEY_FILE)
    if not SECRET_KEY:
        HUB_MISSING_SECRETS.append(SECRET_KEY_FILE)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
HUB_PORT = env.int("HUB_PORT", default=8000)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "ninja",
    "dashboard",
    "accounts",
    "sequences",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "dashboard.middleware.SecurityHeadersMiddleware",
    "dashboard.middleware.ApiJsonErrorsMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.access.role_context",
            ],
        },
    }
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{HUB_DATA_DIR / 'hub.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let the web, worker and beat processes write side by side.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(HUB_DATA_DIR / "test.sqlite3")}
else:
    # One bounded pool per process: a web serving hundreds of requests at once (a thread each)
    # would otherwise hold a connection per request, past PostgreSQL's max_connections.
    # Pooled connections are not persistent ones: CONN_MAX_AGE stays 0.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("HUB_DB_POOL_SIZE", default=20),
        # How long a request waits for a connection. While the database is down every request
        # waits this long before its error (503), so it is short; a web this busy is overloaded.
        "timeout": 5,
    }
    # A pooled connection is checked (one empty round trip) as it leaves the pool: after a
    # database restart every pooled one is dead, and each would fail a request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# With no REDIS_URL the hub uses a Redis of its own (started by `runhub`): on a Unix socket in
# a folder only the hub's user may enter, and with a password `hub_init` made, so sequence code
# can issue it no command (docs/operations.md, "The hub's Redis and database").
EMBEDDED_REDIS_DIR = HUB_DATA_DIR / "redis"
EMBEDDED_REDIS_SOCKET = EMBEDDED_REDIS_DIR / "redis.sock"
EMBEDDED_REDIS_PASSWORD_FILE = EMBEDDED_REDIS_DIR / "password"
REDIS_URL = env.str("REDIS_URL", default="")
HUB_EMBEDDED_REDIS = not REDIS_URL
if HUB_EMBEDDED_REDIS:
    EMBEDDED_REDIS_PASSWORD = _kept_secret(EMBEDDED_REDIS_PASSWORD_FILE)
    REDIS_URL = f"unix://:{EMBEDDED_REDIS_PASSWORD}@{EMBEDDED_REDIS_SOCKET}?db=0"
    if not EMBEDDED_REDIS_PASSWORD:
        HUB_MISSING_SECRETS.append(EMBEDDED_REDIS_PASSWORD_FILE)

CHANNEL_LAYERS = {
    "default": {
        # channels_redis's layer with its keys in the hub's namespace (sequences/live.py).
        "BACKEND": "sequences.live.ChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s timeout by default, exactly the time channels_redis
            # blocks in BZPOPMIN waiting for a message: a consumer whose groups stayed quiet
            # for 5 s died of "Timeout reading" (a console log page stopped after ~5 s).
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": None,
                    "socket_connect_timeout": 5,
                    "health_check_interval": 30,
                }
            ],
            "prefix": "asgi",
        },
    }
}


def _celery_url(url: str) -> str:
    # Kombu spells a Redis Unix socket `redis+socket://`; redis-py spells it `unix://`.
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://").replace("?db=", "?virtual_host=")
    return url


CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_celery_url(REDIS_URL))
# Messages are JSON, never pickle: whoever can write to the broker must not run code by it.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_DEFAULT_QUEUE = env.str("HUB_QUEUE", default="hub")
# Celery's keys go under the hub's namespace: dashboard/celery.py sets kombu's global_keyprefix.
CELERY_BEAT_SCHEDULE = {
    "detect-lost": {"task": "runner.tasks.detect_lost", "schedule": 5.0},
    "prune-ended": {"task": "runner.tasks.prune_ended", "schedule": 60.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(HUB_DATA_DIR / "celerybeat-schedule")

# Uploaded packages: a folder (HUB_STORAGE_DIR, shared when workers run on several machines) or
# an S3-compatible bucket (HUB_S3_*); checked here, so a wrong setting stops every process at
# start with its name (dashboard/package_storage.py).
STORAGES = {
    "default": package_storage(os.environ, HUB_DATA_DIR),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The package folder, when packages are kept in one (hub_init makes it; children never see it).
HUB_STORAGE_DIR = (
    Path(STORAGES["default"]["OPTIONS"]["location"])
    if STORAGES["default"]["BACKEND"] == FOLDER_BACKEND
    else None
)
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = HUB_DATA_DIR / "static"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}

# The hub's own knobs.
# Passwords set through the console's Users page (and `manage.py changepassword`).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
HUB_ANONYMOUS_ROLE = env.str("HUB_ANONYMOUS_ROLE", default="none")
if HUB_ANONYMOUS_ROLE not in {"none", "viewer", "operator", "admin"}:
    raise ValueError("HUB_ANONYMOUS_ROLE must be one of none, viewer, operator, admin")
HUB_MAX_INSTANCES = env.int("HUB_MAX_INSTANCES", default=1000)
HUB_WORKER_CAPACITY = env.int("HUB_WORKER_CAPACITY", default=1000)
# "gpu,zone=a": what a start's placement may ask of this worker (sequences/placement.py).
HUB_WORKER_LABELS = worker_labels(env.list("HUB_WORKER_LABELS", default=[]))
HUB_INSTANCE_RETENTION = parse_duration(env.str("HUB_INSTANCE_RETENTION", default="1d"))
HUB_TOPIC_RETENTION = parse_duration(env.str("HUB_TOPIC_RETENTION", default="1h"))
HUB_TOPIC_MAX_CHUNKS = env.int("HUB_TOPIC_MAX_CHUNKS", default=10_000)
HUB_PACKAGE_MAX_FILES = env.int("HUB_PACKAGE_MAX_FILES", default=10_000)
HUB_PACKAGE_MAX_BYTES = env.int("HUB_PACKAGE_MAX_BYTES", default=512 * 1024 * 1024)
HUB_UPLOAD_MAX_BYTES = env.int("HUB_UPLOAD_MAX_BYTES", default=256 * 1024 * 1024)
HUB_START_TIMEOUT = env.float("HUB_START_TIMEOUT", default=30.0)
HUB_LOST_AFTER = env.float("HUB_LOST_AFTER", default=15.0)
# Resource samples (sequences/resources.py): how often a worker samples each instance's CPU and
# memory, and how long the samples stay after the instance ended.
HUB_SAMPLE_SECONDS = env.float("HUB_SAMPLE_SECONDS", default=5.0)
if not 0.2 <= HUB_SAMPLE_SECONDS <= 3600:
    raise ValueError("HUB_SAMPLE_SECONDS must be between 0.2 and 3600 seconds")
# The scheduling priority (nice, 0 to 19) of every instance and sequencer child: under load the
# hub's own processes (the web serving streams and pages, the worker moving lines) run before
# sequence code, and a child cannot raise its own priority back (runner/forkserver.py).
HUB_CHILD_NICE = env.int("HUB_CHILD_NICE", default=10)
if not 0 <= HUB_CHILD_NICE <= 19:
    raise ValueError("HUB_CHILD_NICE must be between 0 and 19")
HUB_RESOURCE_RETENTION = parse_duration(env.str("HUB_RESOURCE_RETENTION", default="1h"))
HUB_LOGIN_ATTEMPTS = env.int("HUB_LOGIN_ATTEMPTS", default=10)
# Console log search (dashboard/search.py): searches at once per web process, and the time one
# may take before it answers with what it found so far.
HUB_SEARCH_CONCURRENCY = env.int("HUB_SEARCH_CONCURRENCY", default=2)
HUB_SEARCH_SECONDS = env.float("HUB_SEARCH_SECONDS", default=10.0)
# The namespace of the hub's Redis keys; unset, the id kept in the database (sequences/hubs.py).
HUB_ID = env.str("HUB_ID", default="")


def _networks(name: str) -> list[str]:
    entries: list[str] = env.list(name, default=[])
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{name}: {entry!r} is not an address or network (CIDR)") from None
    return entries


# Peers whose X-Forwarded-For is believed (dashboard/views/common.py:client_ip); anyone else's
# is ignored, so a client cannot choose the address the login limit counts it under.
HUB_TRUSTED_PROXIES = _networks("HUB_TRUSTED_PROXIES")
# Who may read /metrics (dashboard/metrics.py): a client sending this token as a Bearer, or one
# from these addresses (CIDRs, the client's address as HUB_TRUSTED_PROXIES tells it). Neither
# set: this machine only, and not through a proxy.
HUB_METRICS_TOKEN = env.str("HUB_METRICS_TOKEN", default="")
HUB_METRICS_ALLOW = _networks("HUB_METRICS_ALLOW")
# Isolation of sequence code (runner/isolation.py, docs/operations.md): "auto" runs each child
# as a user id of its own when the worker is root; "none" keeps the worker's user; a user name
# runs every child as that user.
HUB_RUN_AS = env.str("HUB_RUN_AS", default="auto")
# The folders children must reach (their own, unpacked packages, what the worker lends them)
# live in the data folder, unless a root worker's data folder is closed to other users: then in
# HUB_CHILDREN_ROOT/<a hash of the data folder>, or in HUB_CHILDREN_DIR if set (runner/places.py).
HUB_CHILDREN_DIR = Path(_d).resolve() if (_d := env.str("HUB_CHILDREN_DIR", default="")) else None
HUB_CHILDREN_ROOT = Path(env.str("HUB_CHILDREN_ROOT", default="/var/lib/sequence-hub"))
HUB_RUN_UID_BASE = env.int("HUB_RUN_UID_BASE", default=1_900_000_000)
HUB_RUN_UID_COUNT = env.int("HUB_RUN_UID_COUNT", default=1 << 24)
# Network of a child: "host" (the machine's, but no TCP connection to the ports of the hub's
# own Redis and database: runner/landlock.py) or "isolated" (an empty network namespace).
HUB_SANDBOX_NETWORK = {"true": "isolated", "false": "host"}.get(
    env.str("HUB_SANDBOX_NETWORK", default="host").lower(),
    env.str("HUB_SANDBOX_NETWORK", default="host").lower(),
)
if HUB_SANDBOX_NETWORK not in {"host", "isolated"}:
    raise ValueError("HUB_SANDBOX_NETWORK must be host or isolated")
# Landlock for every child (runner/landlock.py): off only to debug a sandbox problem.
HUB_SANDBOX = env.bool("HUB_SANDBOX", default=True)
# More TCP ports children may not connect to, beside those of REDIS_URL and DATABASE_URL.
HUB_SANDBOX_CLOSED_PORTS = [int(p) for p in env.list("HUB_SANDBOX_CLOSED_PORTS", default=[])]
# Uploaded packages are the hub's, not the children's.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Its keys in the hub's namespace (sequences/live.py).
        "KEY_FUNCTION": "sequences.live.cache_key",
        # JSON, not Django's default pickle: a value planted in Redis must not run code here.
        "OPTIONS": {"serializer": "dashboard.cache_json.JSONSerializer"},
    }
}
