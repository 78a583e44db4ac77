"""ASGI entry point: HTTP (pages, API, streams, static files) and WebSockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

import django

django.setup(set_prefix=False)  # as get_asgi_application does; before the ORM's users

import logging  # noqa: E402

from sequences import hubs  # noqa: E402

# The hub id names every Redis key (sequences/live.py): read before anything uses one, and
# say when another hub uses the same Redis database.
for _warning in hubs.at_start():
    logging.getLogger("sequences.hubs").warning(_warning)

from dashboard.api_handler import ApiHandler, PagesHandler, split_api  # noqa: E402
from dashboard.daphne_streaming import install as stream_request_bodies  # noqa: E402

# A few API routes read their body as it arrives (dashboard/streaming.py).
stream_request_bodies()
django_app = PagesHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": split_api(ASGIStaticFilesHandler(django_app), ApiHandler()),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

import gc  # noqa: E402

# What was loaded to serve (Django, the hub's modules, the URL conf) lives as long as the
# process: out of the collector's sight, a full collection walks only what requests and
# followers made since. With a thousand followers a full collection of everything held the
# event loop for 0.3-0.5 s every few seconds, and every followed line waited behind it
# (bench/README.md, session 8). Fewer young collections, too: each walked the followers'
# young objects once per 700 allocations.
gc.collect()
gc.freeze()
gc.set_threshold(20_000, 20, 20)
