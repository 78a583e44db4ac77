"""The Celery app: workers supervise instance and sequencer processes, beat prunes and checks."""

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")


class HubCelery(Celery):
    """Celery whose every broker connection keeps its keys (queues, bindings, fan-out channels)
    under the hub's namespace, kombu's `global_keyprefix`, so two hubs on one Redis never take
    each other's tasks. Set at the first connection, not in settings: the hub id comes from the
    database (sequences/hubs.py), which settings cannot read. Every connection (the worker's,
    beat's, `celery inspect`'s) is made by one of these two methods."""

    _namespaced = False

    def _namespace(self) -> None:
        if self._namespaced:
            return
        import django

        django.setup()  # done already in a worker or beat; not in `celery inspect`
        from sequences import live

        options = dict(self.conf.broker_transport_options or {})
        options["global_keyprefix"] = live.celery_prefix()
        self.conf.broker_transport_options = options
        self._namespaced = True

    def connection_for_read(self, url: Any = None, **kwargs: Any) -> Any:
        self._namespace()
        return super().connection_for_read(url, **kwargs)

    def connection_for_write(self, url: Any = None, **kwargs: Any) -> Any:
        self._namespace()
        return super().connection_for_write(url, **kwargs)


app = HubCelery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["runner"])


@signals.worker_init.connect
def _look_for_other_hubs(**_: Any) -> None:
    """A worker says at start when another hub uses its Redis database."""
    from sequences import hubs

    for warning in hubs.at_start():
        logging.getLogger("sequences.hubs").warning(warning)
