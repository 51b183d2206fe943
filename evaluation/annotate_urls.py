"""Annotator routes (placeholder until the evaluation app fills it)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from arbiter.accounts.decorators import annotator_required

app_name = "annotate"


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"title": "Your queue"})


urlpatterns = [path("", queue, name="queue")]
