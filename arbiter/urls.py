"""Top-level URL map: accounts, dashboard, the training, evaluation and loop apps, their APIs, admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from arbiter import views

admin.site.site_header = "Arbiter administration"

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("arbiter.accounts.urls")),
    path("runs/", include("training.urls")),
    path("api/studies/", include("evaluation.api_urls")),
    path("api/worker/", include("workers.urls")),
    path("artifacts/", include("artifacts.urls")),
    path("api/", include("loop.api_urls")),
    path("api/", include("training.api_urls")),
    path("studies/", include("evaluation.urls")),
    path("annotate/", include("evaluation.annotate_urls")),
    path("", include("loop.urls")),
    path("admin/", admin.site.urls),
]
