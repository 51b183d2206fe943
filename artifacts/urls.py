"""URLs of artifact downloads."""

from django.urls import path

from artifacts import views

app_name = "artifacts"

urlpatterns = [
    path("checkpoints/<int:checkpoint_id>/download/", views.checkpoint_download, name="checkpoint_download"),
]
