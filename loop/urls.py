"""Pages of the loop app: the models list and leaderboard, sampling jobs, and the cards other pages load."""

from django.urls import path

from loop import views

app_name = "loop"
urlpatterns = [
    path("models/", views.models, name="models"),
    path("samples/new/", views.sample_new, name="sample_new"),
    path("samples/<int:job_id>/", views.sample_job, name="sample_job"),
    path("samples/<int:job_id>/status/", views.sample_job_status, name="sample_job_status"),
    path("samples/<int:job_id>/cancel/", views.sample_job_cancel, name="sample_job_cancel"),
    path("lineage/runs/<int:run_id>/", views.run_lineage, name="run_lineage"),
    path("lineage/studies/<int:study_id>/", views.study_lineage, name="study_lineage"),
    path("models/runs/<int:run_id>/", views.run_leaderboard, name="run_leaderboard"),
    path("samples/runs/<int:run_id>/send/", views.send_table_rows, name="send_table_rows"),
]
