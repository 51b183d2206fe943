"""URLs of the worker API, mounted at /api/worker/."""

from django.urls import path

from workers import api

app_name = "workers_api"

urlpatterns = [
    path("hello/", api.hello, name="hello"),
    path("runs/<int:run_id>/claim/", api.claim, name="claim"),
    path("runs/<int:run_id>/heartbeat/", api.heartbeat, name="heartbeat"),
    path("runs/<int:run_id>/finish/", api.finish, name="finish"),
    path("samples/<int:job_id>/claim/", api.claim_sample, name="sample_claim"),
    path("samples/<int:job_id>/progress/", api.sample_progress, name="sample_progress"),
    path("samples/<int:job_id>/finish/", api.sample_finish, name="sample_finish"),
]
