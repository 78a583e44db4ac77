from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from dashboard.api import api
from dashboard.metrics import health_view, metrics_view


@csrf_exempt
def api_root(request: HttpRequest) -> JsonResponse:
    """The bare API prefix is no route: say where the routes are, for any method."""
    return JsonResponse(
        {
            "error": "no API route here: see /api/v1/docs and /api/v1/openapi.json",
            "code": "NOT_FOUND",
        },
        status=404,
    )


urlpatterns = [
    # Before api.urls: Ninja's own root view is not CSRF-exempt, so a POST to it answered 403.
    path("api/v1/", api_root),
    path("api/v1/", api.urls),
    # For the operator's Prometheus and load balancer (dashboard/metrics.py).
    path("metrics", metrics_view, name="metrics"),
    path("health", health_view, name="health"),
    path("", include("dashboard.pages")),
]
