"""The studies API, mounted at /api/studies/ (evaluation.api): user API keys or the browser's session."""

from __future__ import annotations

from django.urls import path

from evaluation import api

app_name = "evaluation_api"

urlpatterns = [
    path("", api.studies, name="studies"),
    path("<int:study_id>/", api.study, name="study"),
    path("<int:study_id>/items/", api.items, name="items"),
    path("<int:study_id>/imports/<int:import_id>/", api.import_status, name="import_status"),
    path("<int:study_id>/annotators/", api.annotators, name="annotators"),
    path("<int:study_id>/progress/", api.progress, name="progress"),
    path("<int:study_id>/results/", api.study_results, name="results"),
    path("<int:study_id>/exports/", api.exports, name="exports"),
    path("<int:study_id>/exports/<int:export_id>/", api.export_status, name="export_status"),
    path("<int:study_id>/exports/<int:export_id>/download/", api.export_download, name="export_download"),
]
