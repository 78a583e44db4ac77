"""The Celery app: workers supervise instance and sequencer processes, beat prunes and checks."""

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["runner"])


@signals.import_modules.connect(sender=app)
def _namespace_the_broker(**_: Any) -> None:
    """Celery's keys (queues, bindings, fan-out channels) under the hub's namespace, so two
    hubs on one Redis never take each other's tasks. The worker and beat send this before
    they make a broker connection, after Django's fixup has set Django up; the hub id comes
    from the database (sequences/hubs.py), which settings could not read."""
    import django

    django.setup()
    from sequences import live

    options = dict(app.conf.broker_transport_options or {})
    options["global_keyprefix"] = live.celery_prefix()
    app.conf.broker_transport_options = options


@signals.worker_init.connect
def _look_for_other_hubs(**_: Any) -> None:
    """A worker says at start when another hub uses its Redis database."""
    from sequences import hubs

    for warning in hubs.at_start():
        logging.getLogger("sequences.hubs").warning(warning)
