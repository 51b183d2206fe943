"""Every websocket route of the project, gathered from the apps."""

from __future__ import annotations

from django.urls import path

from arbiter.consumers import PingConsumer
from evaluation.routing import websocket_urlpatterns as evaluation_routes
from training.routing import websocket_urlpatterns as training_routes

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
    *training_routes,
    *evaluation_routes,
]
