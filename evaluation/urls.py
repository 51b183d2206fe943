"""Researcher routes, mounted at /studies/."""

from __future__ import annotations

from django.urls import path

from evaluation import views

app_name = "evaluation"

urlpatterns = [
    path("", views.study_list, name="study_list"),
    path("new/", views.study_create, name="study_create"),
    path("<int:study_id>/", views.study_detail, name="study_detail"),
    path("<int:study_id>/edit/", views.study_edit, name="study_edit"),
    path("<int:study_id>/labels/", views.study_labels, name="study_labels"),
    path("<int:study_id>/archive/", views.study_archive, name="study_archive"),
    path("<int:study_id>/delete/", views.study_delete, name="study_delete"),
    path("<int:study_id>/items/", views.item_list, name="item_list"),
    path("<int:study_id>/items/example.jsonl", views.items_example, name="items_example"),
    path("<int:study_id>/items/<int:item_id>/", views.item_detail, name="item_detail"),
    path("<int:study_id>/items/<int:item_id>/edit/", views.item_edit, name="item_edit"),
    path("<int:study_id>/items/<int:item_id>/delete/", views.item_delete, name="item_delete"),
    path("<int:study_id>/items/upload/", views.items_upload, name="items_upload"),
    path("<int:study_id>/items/upload/<int:import_id>/", views.import_status, name="import_status"),
    path("<int:study_id>/items/new/", views.item_create, name="item_create"),
    path("<int:study_id>/quality/", views.quality, name="quality"),
    path("<int:study_id>/results/", views.results, name="results"),
    path("<int:study_id>/export/", views.export_page, name="export"),
    path("<int:study_id>/export/<int:export_id>/", views.export_status, name="export_status"),
    path("<int:study_id>/export/<int:export_id>/download/", views.export_download, name="export_download"),
    path("<int:study_id>/export/<int:export_id>/delete/", views.export_delete, name="export_delete"),
]
