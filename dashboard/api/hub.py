"""Host-level routes: version, load check, entities."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from dashboard.api.auth import HubRouter, Role
from sequences import catalog, hostinfo, instances

router = HubRouter(tags=["hub"])


@router.get("/version", auth=Role("viewer"), summary="Hub version")
def version(request: HttpRequest) -> dict[str, Any]:
    return hostinfo.version()


@router.get("/load-check", auth=Role("viewer"), summary="Load, memory and disk of the hub host")
def load_check(request: HttpRequest) -> dict[str, Any]:
    return hostinfo.load_check(settings.HUB_DATA_DIR)


@router.get("/entities", auth=Role("viewer"), summary="Sequences and instances in one answer")
def entities(request: HttpRequest) -> dict[str, Any]:
    return {
        "sequences": catalog.list_described(),
        "instances": [instances.info(i) for i in instances.list_instances()],
    }
