"""Console views (placeholder until the console pages land)."""

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from dashboard.access import role_required


def login_view(request: HttpRequest) -> HttpResponse:
    return auth_views.LoginView.as_view(template_name="login.html")(request)


@role_required("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Sequence Hub")
