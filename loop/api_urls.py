"""Routes of the loop's read API (mounted at /api/): lineage and the leaderboard."""

from django.urls import path

from loop import api

app_name = "loop_api"
urlpatterns = [
    path("lineage/runs/<int:run_id>/", api.run_lineage, name="run_lineage"),
    path("lineage/studies/<int:study_id>/", api.study_lineage, name="study_lineage"),
    path("leaderboard/", api.leaderboard, name="leaderboard"),
]
