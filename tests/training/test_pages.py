"""The training pages through Django's test client: launch form, list filters and sort, visibility, compare."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from training.models import MetricKey, MetricSummary, Run, RunTag

pytestmark = pytest.mark.django_db


def _summary(run: Run, key: str, value: float) -> None:
    k, _ = MetricKey.objects.get_or_create(name=key)
    MetricSummary.objects.create(
        run=run, key=k, n=1, last_step=1, last_value=value, last_time=0, min_value=value, max_value=value
    )


def test_launch_form_is_generated_from_the_recipe_config(client_for: Any, researcher: User) -> None:
    page = client_for(researcher).get("/runs/new/", {"recipe": "demo"})
    assert page.status_code == 200
    html = page.content.decode()
    for field in ("cfg_max_steps", "cfg_learning_rate", "cfg_lr_scheduler", "cfg_step_delay_s"):
        assert f'name="{field}"' in html


def test_each_bad_config_field_gets_its_own_message_and_422(client_for: Any, researcher: User) -> None:
    response = client_for(researcher).post(
        "/runs/new/",
        {
            "recipe": "demo",
            "queue": "gpu",
            "cfg_max_steps": "0",
            "cfg_learning_rate": "5",
            "cfg_lr_scheduler": "linear",
        },
    )
    assert response.status_code == 422
    form = response.context["form"]
    assert "cfg_max_steps" in form.errors and "cfg_learning_rate" in form.errors
    assert "greater than or equal to 1" in form.errors["cfg_max_steps"][0]
    assert "less than or equal to 1" in form.errors["cfg_learning_rate"][0]
    assert not Run.objects.exists()


def test_valid_launch_queues_a_run_and_opens_its_page(client_for: Any, researcher: User) -> None:
    response = client_for(researcher).post(
        "/runs/new/",
        {
            "recipe": "demo",
            "queue": "gpu",
            "name": "mine",
            "tags": "a, b",
            "cfg_max_steps": "7",
            "cfg_lr_scheduler": "constant",
            "cfg_device": "cpu",
            "cfg_dtype": "float32",
        },
    )
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert (run.status, run.name, run.config["max_steps"]) == ("queued", "mine", 7)
    assert sorted(run.tags.values_list("name", flat=True)) == ["a", "b"]
    assert list(run.transitions.values_list("status", flat=True)) == ["queued"]


def test_new_run_is_prefilled_from_a_study_export(client_for: Any, researcher: User) -> None:
    page = client_for(researcher).get("/runs/new/", {"recipe": "demo", "dataset": "/data/export-3.jsonl"})
    assert 'value="/data/export-3.jsonl"' in page.content.decode()


def test_annotator_cannot_see_any_run(client_for: Any, researcher: User, annotator: User, make_run: Any) -> None:
    run = make_run(researcher, shared=True)
    client = client_for(annotator)
    for url in ("/runs/", f"/runs/{run.id}/", "/runs/compare/"):
        assert client.get(url).status_code == 403
    for url in (f"/api/runs/{run.id}/", f"/api/runs/{run.id}/metrics/?key=loss", f"/api/runs/{run.id}/logs/"):
        assert client.get(url).status_code == 404


def test_other_researchers_see_shared_runs_but_not_private_ones(
    client_for: Any, researcher: User, other_researcher: User, make_run: Any
) -> None:
    private, shared = make_run(researcher, name="private"), make_run(researcher, name="shared", shared=True)
    client = client_for(other_researcher)
    assert client.get(f"/runs/{private.id}/").status_code == 404
    assert client.get(f"/runs/{shared.id}/").status_code == 200
    listed = [r.id for r in client.get("/runs/").context["runs"]]
    assert listed == [shared.id]
    # Seeing is not changing: the cancel button's endpoint is a 404 for non-owners.
    assert client.post(f"/runs/{shared.id}/cancel/").status_code == 404


def test_list_filters_by_status_recipe_tag_and_name(client_for: Any, researcher: User, make_run: Any) -> None:
    a = make_run(researcher, name="alpha-sft", recipe="sft", status="running", started_at="2026-01-01T00:00Z")
    b = make_run(researcher, name="beta-demo", recipe="demo", status="failed")
    RunTag.objects.create(run=b, name="ablation")
    client = client_for(researcher)

    def ids(**params: str) -> list[int]:
        return [r.id for r in client.get("/runs/", params).context["runs"]]

    assert ids(status="running") == [a.id]
    assert ids(recipe="demo") == [b.id]
    assert ids(tag="ablation") == [b.id]
    assert ids(q="ALPHA") == [a.id]


def test_list_sorts_by_a_final_metric_with_missing_values_last(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    low, high, none = make_run(researcher, name="low"), make_run(researcher, name="high"), make_run(researcher)
    _summary(low, "reward", 0.1)
    _summary(high, "reward", 0.9)
    client = client_for(researcher)
    down = [r.id for r in client.get("/runs/", {"sort": "-metric:reward"}).context["runs"]]
    up = [r.id for r in client.get("/runs/", {"sort": "metric:reward"}).context["runs"]]
    assert down == [high.id, low.id, none.id] and up == [low.id, high.id, none.id]


def test_run_list_query_count_does_not_grow_with_runs(
    client_for: Any, researcher: User, make_run: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(30):
        run = make_run(researcher, name=f"r{i}")
        RunTag.objects.create(run=run, name=f"t{i % 3}")
        _summary(run, "loss", float(i))
    client = client_for(researcher)
    client.get("/runs/")  # warm the session
    with django_assert_max_num_queries(7):
        response = client.get("/runs/", {"sort": "-metric:loss"})
    assert len(response.context["runs"]) == 30


def test_htmx_filter_returns_only_the_table(client_for: Any, researcher: User, make_run: Any) -> None:
    make_run(researcher, name="x")
    html = client_for(researcher).get("/runs/", HTTP_HX_REQUEST="true").content.decode()
    assert html.lstrip().startswith('<div id="run-table"') and "<html" not in html


def test_compare_shows_only_the_config_fields_that_differ(client_for: Any, researcher: User, make_run: Any) -> None:
    a = make_run(researcher, config={"learning_rate": 0.001, "max_steps": 100})
    b = make_run(researcher, config={"learning_rate": 0.003, "max_steps": 100})
    response = client_for(researcher).get("/runs/compare/", {"runs": f"{a.id},{b.id}"})
    assert response.context["diff"] == [{"key": "learning_rate", "values": [0.001, 0.003]}]


def test_cancel_of_a_queued_run_is_immediate_and_recorded(client_for: Any, researcher: User, make_run: Any) -> None:
    run = make_run(researcher, status="queued")
    response = client_for(researcher).post(f"/runs/{run.id}/cancel/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Cancelled" in response.content.decode()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.transitions.get().status == "cancelled"


def test_run_page_and_api_docs_render(client_for: Any, researcher: User, make_run: Any) -> None:
    run = make_run(researcher, config={"lr": 1})
    assert 'id="live-run"' in client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    doc = client_for(None).get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/runs/{run_id}/metrics/" in doc["paths"]
    assert client_for(None).get("/api/docs/").status_code == 200


def test_every_openapi_path_is_a_real_route_and_every_api_route_is_documented() -> None:
    from django.urls import resolve

    from evaluation import api_urls as study_api_urls
    from loop import api_urls as loop_api_urls
    from training import api_urls
    from training.openapi import openapi_document

    doc = openapi_document(server="")
    documented = set()
    for path in doc["paths"]:
        for name in ("run_id", "study_id", "import_id", "export_id"):
            path = path.replace(f"{{{name}}}", "1")
        match = resolve(path)
        assert match.namespace in {"training_api", "loop_api", "evaluation_api"}, path
        documented.add(f"{match.namespace}:{match.url_name}")
    routes = {f"training_api:{p.name}" for p in api_urls.urlpatterns if p.name not in {"openapi", "docs"}}
    routes |= {f"loop_api:{p.name}" for p in loop_api_urls.urlpatterns}
    routes |= {f"evaluation_api:{p.name}" for p in study_api_urls.urlpatterns}
    assert routes == documented


def test_admin_cancel_action_goes_through_the_service(
    client_for: Any, admin_user: User, researcher: User, make_run: Any
) -> None:
    queued = make_run(researcher, status="queued")
    response = client_for(admin_user).post(
        "/admin/training/run/", {"action": "cancel_runs", "_selected_action": [queued.id]}
    )
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    assert queued.transitions.get().note == f"cancelled by {admin_user.username}"


def test_gtpo_with_a_kl_term_is_refused_on_the_beta_field(client_for: Any, researcher: User) -> None:
    response = client_for(researcher).post(
        "/runs/new/",
        {"recipe": "grpo", "queue": "gpu", "cfg_variant": "gtpo", "cfg_scale_rewards": "none", "cfg_beta": "0.04"},
    )
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert list(errors) == ["cfg_beta"]
    assert "GTPO has no KL term" in errors["cfg_beta"][0]
    assert not Run.objects.exists()


def test_evaluation_without_held_out_data_is_refused_on_its_field(client_for: Any, researcher: User) -> None:
    client = client_for(researcher)
    page = client.get("/runs/new/", {"recipe": "sft"}).content.decode()
    assert "Evaluation (held-out data)" in page and 'name="cfg_eval_fraction"' in page
    response = client.post("/runs/new/", {"recipe": "sft", "queue": "gpu", "cfg_eval_steps": "50"})
    assert response.status_code == 422
    assert list(response.context["form"].errors) == ["cfg_eval_steps"]
    assert not Run.objects.exists()
