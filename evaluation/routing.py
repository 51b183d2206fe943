"""Websocket routes of the evaluation app."""

from __future__ import annotations

from django.urls import path

from evaluation.consumers import StudyConsumer

websocket_urlpatterns = [path("ws/studies/<int:study_id>/", StudyConsumer.as_asgi())]
