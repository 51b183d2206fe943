"""JSON routes, mounted at /api/studies/: study progress for pages and scripts (session auth)."""

from __future__ import annotations

from django.urls import path

from evaluation import views

app_name = "evaluation_api"

urlpatterns = [path("<int:study_id>/progress/", views.progress_api, name="progress")]
