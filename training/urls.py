"""URL routes (placeholder until the app fills it; base.html links to run_list)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from arbiter.accounts.decorators import researcher_required

app_name = "training"


@researcher_required
def run_list(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"title": "Runs"})


urlpatterns = [path("", run_list, name="run_list")]
