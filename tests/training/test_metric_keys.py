"""Metric keys (issue 12 item 4): bounded per run, pages small whatever others log, unused keys pruned."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test import Client

from arbiter.accounts.models import User
from tests.conftest import current_database_url
from training import selectors
from training.models import MetricKey, MetricSummary, Run
from training.payloads import MetricBatch
from training.selectors import stored_points
from training.services import ingest, runs
from training.tasks import prune_metric_keys

pytestmark = pytest.mark.django_db(transaction=True)


def post(path: str, body: Any, token: str) -> Any:
    raw = gzip.compress(json.dumps(body).encode())
    return Client().post(
        path,
        data=raw,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_CONTENT_ENCODING="gzip",
    )


def series(keys: list[str], step: int = 0) -> dict[str, Any]:
    return {"series": [{"key": k, "steps": [step], "values": [1.0]} for k in keys]}


def keys_of(run: Run) -> int:
    return MetricSummary.objects.filter(run=run).count()


@pytest.mark.sqlite
def test_a_run_gets_a_clear_400_past_its_distinct_key_limit_and_nothing_is_written(
    external_run: tuple[Run, str], settings: Any
) -> None:
    settings.RUN_MAX_METRIC_KEYS = 20
    run, token = external_run
    url = f"/api/runs/{run.id}/metrics/"
    assert post(url, series([f"k{i}" for i in range(15)]), token).status_code == 200
    refused = post(url, series([f"k{i}" for i in range(10, 25)], step=1), token)  # 10 new: 25 > 20
    assert refused.status_code == 400
    error = refused.json()
    assert error["field"] == "key"
    assert "20" in error["error"] and "RUN_MAX_METRIC_KEYS" in error["error"]
    assert keys_of(run) == 15 and stored_points(run_id=run.id) == 15  # the whole batch refused

    # Keys the run already has are always accepted; new ones up to the limit too.
    assert post(url, series([f"k{i}" for i in range(15)], step=2), token).status_code == 200
    assert post(url, series([f"k{i}" for i in range(15, 20)], step=2), token).status_code == 200
    assert keys_of(run) == 20
    assert post(url, series(["one-more"], step=3), token).status_code == 400
    # System samples are metrics of the run too (system/<field>).
    sample = {"samples": [{"seq": 0, "cpu_percent": 1.0}]}
    assert post(f"/api/runs/{run.id}/system/", sample, token).status_code == 400
    assert keys_of(run) == 20


def test_the_limit_is_documented_in_the_openapi_description(settings: Any) -> None:
    settings.RUN_MAX_METRIC_KEYS = 1234
    doc = Client().get("/api/openapi.json").json()
    assert "1234 distinct metric keys" in doc["paths"]["/api/runs/{run_id}/metrics/"]["post"]["description"]


def _flood(owner: User, *, runs_n: int, keys_per_run: int) -> None:
    """Another researcher's runs with many distinct keys, written through the ingest service."""
    for r in range(runs_n):
        run, _ = runs.create_external_run(owner=owner, name=f"flood-{r}", config={})
        names = [f"flood/r{r}/metric_{i:05d}" for i in range(keys_per_run)]
        zeros = [0] * len(names)
        ingest.record_metrics(run=run, batch=MetricBatch(names, zeros, [1.0] * len(names), [0.0] * len(names)))


def test_the_admins_run_list_and_compare_page_stay_small_whatever_others_log(
    admin_user: User, other_researcher: User, settings: Any
) -> None:
    settings.RUN_MAX_METRIC_KEYS = 1000
    _flood(other_researcher, runs_n=6, keys_per_run=1000)  # 6,000 distinct keys, all visible to the admin
    client = Client()
    client.force_login(admin_user)
    page = client.get("/runs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert len(page.content) < 150_000, len(page.content)
    sort_options = re.findall(r'<option value="-?metric:', html)
    assert 0 < len(sort_options) <= 2 * selectors.MAX_KEY_CHOICES
    ids = ",".join(str(r.id) for r in Run.objects.all()[:6])
    compare = client.get(f"/runs/compare/?runs={ids}")
    assert compare.status_code == 200
    assert len(re.findall(r'<option value="flood/', compare.content.decode())) <= selectors.MAX_COMPARE_KEYS


def test_a_chosen_column_beyond_the_offered_keys_still_shows(researcher: User, settings: Any) -> None:
    settings.RUN_MAX_METRIC_KEYS = 1000
    _flood(researcher, runs_n=1, keys_per_run=selectors.MAX_KEY_CHOICES + 20)
    rare = f"flood/r0/metric_{selectors.MAX_KEY_CHOICES + 10:05d}"
    client = Client()
    client.force_login(researcher)
    page = client.get("/runs/", {"cols_set": "1", "cols": rare})
    assert f'title="final value of {rare}"' in page.content.decode()


def test_unused_metric_keys_are_pruned_and_used_ones_kept(researcher: User, settings: Any) -> None:
    settings.RUN_MAX_METRIC_KEYS = 1000
    _flood(researcher, runs_n=2, keys_per_run=50)
    kept, gone = Run.objects.get(name="flood-0"), Run.objects.get(name="flood-1")
    gone.delete()
    assert MetricKey.objects.filter(name__startswith="flood/r1/").count() == 50
    assert prune_metric_keys() == 50
    assert not MetricKey.objects.filter(name__startswith="flood/r1/").exists()
    assert MetricKey.objects.filter(name__startswith="flood/r0/").count() == 50
    assert keys_of(kept) == 50


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the fast path's key lookup is PostgreSQL's")
def test_a_batch_whose_key_was_pruned_under_it_is_retried_not_lost(
    external_run: tuple[Run, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune deletes an unused key between a batch's key lookup and its commit: the batch is retried, not a 500."""
    run, _ = external_run
    orphan = MetricKey.objects.create(name="about-to-be-pruned")
    real_lock = ingest._lock_run_pg
    calls = []

    def lock_then_prune(**kwargs: Any) -> Any:
        found = real_lock(**kwargs)
        if not calls:  # first attempt: another connection (the prune task) deletes the key it just looked up
            url = current_database_url().replace("postgres://", "postgresql://", 1)
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("DELETE FROM training_metrickey WHERE id = %s", [orphan.id])
        calls.append(1)
        return found

    monkeypatch.setattr(ingest, "_lock_run_pg", lock_then_prune)
    result = ingest.record_metrics(run=run, batch=MetricBatch(["about-to-be-pruned"], [0], [1.0], [0.0]))
    assert result.written == 1 and len(calls) == 2
    assert MetricSummary.objects.get(run=run).key.name == "about-to-be-pruned"
