"""Pages of the training app, mounted at /runs/."""

from django.urls import path

from training import views

app_name = "training"
urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("new/", views.run_new, name="run_new"),
    path("compare/", views.run_compare, name="run_compare"),
    path("keys/", views.api_keys, name="api_keys"),
    path("pins/", views.panel_pins, name="panel_pins"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("<int:run_id>/", views.run_detail, name="run_detail"),
    path("<int:run_id>/panel/", views.run_panel, name="run_panel"),
    path("<int:run_id>/samples/", views.run_samples, name="run_samples"),
    path("<int:run_id>/checkpoints/", views.run_checkpoints, name="run_checkpoints"),
    path("<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("<int:run_id>/retry/", views.run_retry, name="run_retry"),
    path("<int:run_id>/resume/", views.run_resume, name="run_resume"),
    path("<int:run_id>/edit/", views.run_edit, name="run_edit"),
    path("<int:run_id>/archive/", views.run_archive, name="run_archive"),
    path("<int:run_id>/delete/", views.run_delete, name="run_delete"),
]
