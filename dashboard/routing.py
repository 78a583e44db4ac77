"""WebSocket routes: one consumer per kind of watched object."""

from django.urls import path

websocket_urlpatterns: list = []
