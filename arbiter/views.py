"""Project-level pages: the role-aware landing page and the researcher dashboard."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from arbiter.accounts.decorators import researcher_required
from arbiter.dashboard import dashboard_context


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Annotators land on their queue; everyone else on the dashboard."""
    if request.user.is_annotator:  # type: ignore[union-attr]
        return redirect("annotate:queue")
    return redirect("dashboard")


@researcher_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", dashboard_context(user=request.user))


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and compose: no auth, no database."""
    return HttpResponse("ok", content_type="text/plain")
