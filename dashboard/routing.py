"""WebSocket routes: one consumer per kind of page; the URL names the watched object."""

from django.urls import path

from dashboard import consumers

websocket_urlpatterns: list = [
    path("ws/overview/", consumers.OverviewConsumer.as_asgi()),
    path("ws/instances/", consumers.InstanceListConsumer.as_asgi()),
    path("ws/instances/<str:iid>/", consumers.InstanceConsumer.as_asgi()),
    path("ws/sequencers/", consumers.SequencerListConsumer.as_asgi()),
    path("ws/sequencers/<str:ident>/", consumers.SequencerConsumer.as_asgi()),
    path("ws/components/", consumers.ComponentListConsumer.as_asgi()),
]
