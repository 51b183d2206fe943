"""URL routes (placeholder until the app fills it)."""

from django.urls import URLPattern

app_name = "training_api"
urlpatterns: list[URLPattern] = []
