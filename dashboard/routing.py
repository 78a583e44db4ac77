"""WebSocket routes: one consumer per kind of page; the URL names the watched object."""

from channels.consumer import AsyncConsumer
from django.urls import URLPattern, path

from dashboard import consumers


def _ws(route: str, consumer: type[AsyncConsumer]) -> URLPattern:
    # Channels routes ASGI applications through Django's path(), whose stubs know only views.
    return path(route, consumer.as_asgi())  # type: ignore[arg-type]


websocket_urlpatterns: list = [
    _ws("ws/overview/", consumers.OverviewConsumer),
    _ws("ws/instances/", consumers.InstanceListConsumer),
    _ws("ws/instances/<str:iid>/", consumers.InstanceConsumer),
    _ws("ws/sequencers/", consumers.SequencerListConsumer),
    _ws("ws/sequencers/<str:ident>/", consumers.SequencerConsumer),
    _ws("ws/components/", consumers.ComponentListConsumer),
    _ws("ws/observations/", consumers.ObservationsConsumer),
    _ws("ws/resources/", consumers.ResourcesConsumer),
    _ws("ws/topics/", consumers.TopicListConsumer),
    _ws("ws/topics/<str:name>/", consumers.TopicTailConsumer),
    _ws("ws/workers/", consumers.WorkerListConsumer),
]
