"""URL routes (placeholder until the app fills it)."""

from django.urls import URLPattern

app_name = "evaluation_api"
urlpatterns: list[URLPattern] = []
