"""Routes of the HTTP API (mounted at /api/): ingest, run creation, chart reads, the OpenAPI document."""

from django.urls import path

from training import api

app_name = "training_api"
urlpatterns = [
    path("runs/", api.runs_collection, name="runs"),
    path("runs/launch/", api.run_launch, name="run_launch"),
    path("runs/<int:run_id>/", api.run_state, name="run_state"),
    path("runs/<int:run_id>/metrics/", api.run_metrics, name="run_metrics"),
    path("runs/<int:run_id>/history/", api.run_history, name="run_history"),
    path("runs/<int:run_id>/logs/", api.run_logs, name="run_logs"),
    path("runs/<int:run_id>/system/", api.run_system, name="run_system"),
    path("runs/<int:run_id>/checkpoints/", api.run_checkpoints, name="run_checkpoints"),
    path("runs/<int:run_id>/tables/", api.run_tables, name="run_tables"),
    path("runs/<int:run_id>/status/", api.run_status, name="run_status"),
    path("runs/<int:run_id>/heartbeat/", api.run_heartbeat, name="run_heartbeat"),
    path("openapi.json", api.openapi_json, name="openapi"),
    path("docs/", api.api_docs, name="docs"),
]
