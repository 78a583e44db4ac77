from django.urls import include, path

from sequences.api import api

urlpatterns = [
    path("api/v1/", api.urls),
    path("", include("dashboard.pages")),
]
