"""Host-level routes: version, load check, host log."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja import Router

from dashboard.api.auth import need
from sequences import hostinfo

router = Router(tags=["hub"])


@router.get("/version", summary="Hub version")
def version(request: HttpRequest) -> dict[str, Any]:
    need(request, "viewer")
    return hostinfo.version()


@router.get("/load-check", summary="Load, memory and disk of the hub host")
def load_check(request: HttpRequest) -> dict[str, Any]:
    need(request, "viewer")
    return hostinfo.load_check(settings.HUB_DATA_DIR)
