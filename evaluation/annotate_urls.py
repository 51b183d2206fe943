"""Annotator routes, mounted at /annotate/: the queue, the next item, submit and skip."""

from __future__ import annotations

from django.urls import path

from evaluation import annotate_views as views

app_name = "annotate"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("<int:study_id>/", views.next_item, name="next"),
    path("<int:study_id>/submit/", views.submit, name="submit"),
    path("<int:study_id>/skip/", views.skip, name="skip"),
]
