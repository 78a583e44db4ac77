"""Host-level routes: version, load check, host log."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from dashboard.api.auth import HubRouter, Role
from sequences import hostinfo

router = HubRouter(tags=["hub"])


@router.get("/version", auth=Role("viewer"), summary="Hub version")
def version(request: HttpRequest) -> dict[str, Any]:
    return hostinfo.version()


@router.get("/load-check", auth=Role("viewer"), summary="Load, memory and disk of the hub host")
def load_check(request: HttpRequest) -> dict[str, Any]:
    return hostinfo.load_check(settings.HUB_DATA_DIR)
