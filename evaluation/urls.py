"""URL routes (placeholder until the app fills it; base.html links to study_list)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from arbiter.accounts.decorators import researcher_required

app_name = "evaluation"


@researcher_required
def study_list(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"title": "Studies"})


urlpatterns = [path("", study_list, name="study_list")]
