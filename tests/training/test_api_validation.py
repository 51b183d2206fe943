"""Bad input to the training API is a 400 that names the field, never a 500 (issue 12 item 7).

Each case below answered 500 before: a value past its column's range, a list where a string or
number belongs (unhashable in a set lookup), NUL characters PostgreSQL cannot store, and query
parameters such as `inf` that float() accepts and int() then refuses.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from arbiter.accounts.models import User
from training.models import Checkpoint, LogLine, Run
from training.selectors import stored_points
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


def post(path: str, body: Any, token: str) -> Any:
    raw = gzip.compress(json.dumps(body).encode())
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_CONTENT_ENCODING": "gzip"}
    return Client(raise_request_exception=False).post(path, data=raw, content_type="application/json", **headers)


INGEST_CASES = [
    ("system", {"samples": [{"seq": 2**63, "cpu_percent": 1.0}]}, "samples[0].seq"),
    ("system", {"samples": [{"seq": 1, "time": 1e300, "cpu_percent": 1.0}]}, "samples[0].time"),
    ("checkpoints", {"step": 2**63, "path": "/data/x"}, "step"),
    ("checkpoints", {"step": 1, "path": "/data/a\x00b"}, "path"),
    ("checkpoints", {"step": 1, "path": ["/data"]}, "path"),
    ("status", {"status": "failed", "exit_code": 2**40}, "exit_code"),
    ("status", {"status": []}, "status"),
    ("status", {"status": {"a": 1}}, "status"),
    ("logs", {"lines": [{"seq": 0, "stream": ["stdout"], "text": "x"}]}, "lines[0].stream"),
    ("logs", {"lines": [{"seq": 0, "text": "x", "time": 1e300}]}, "lines[0].time"),
    ("logs", {"lines": [{"seq": 2**63, "text": "x"}]}, "lines[0].seq"),
    ("metrics", {"points": [{"key": ["loss"], "step": 0, "value": 1.0}]}, "points[0].key"),
    ("metrics", {"points": [{"key": "loss", "step": 2**63, "value": 1.0}]}, "points[0].step"),
    ("metrics", {"points": [{"key": "a\x00b", "step": 0, "value": 1.0}]}, "points[0].key"),
    ("metrics", {"series": [{"key": ["loss"], "steps": [0], "values": [1.0]}]}, "series[0].key"),
]


@pytest.mark.parametrize(("kind", "body", "field"), INGEST_CASES, ids=[f"{k}:{f}" for k, _, f in INGEST_CASES])
def test_bad_ingest_field_is_a_400_naming_it(external_run: tuple[Run, str], kind: str, body: Any, field: str) -> None:
    run, token = external_run
    answer = post(f"/api/runs/{run.id}/{kind}/", body, token)
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field
    assert stored_points(run_id=run.id) == 0
    assert not LogLine.objects.filter(run=run).exists()
    assert not Checkpoint.objects.filter(run=run).exists()
    assert Run.objects.get(id=run.id).status == "running"


CREATE_CASES = [
    ({"name": "a\x00b"}, "name"),
    ({"tags": ["ok", "b\x00d"]}, "tags[1]"),
    ({"tags": "not-a-list"}, "tags"),
    ({"config": {"lr": "1e-4\x00"}}, "config.lr"),
    ({"config": {"nested": [{"x\x00": 1}]}}, "config.nested[0].x?"),
    ({"config": []}, "config"),
]


@pytest.mark.parametrize(("body", "field"), CREATE_CASES, ids=[f for _, f in CREATE_CASES])
def test_bad_new_run_field_is_a_400_naming_it(researcher: User, body: Any, field: str) -> None:
    _, key = runs.issue_api_token(user=researcher, name="k")
    answer = post("/api/runs/", body, key)
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field
    assert not Run.objects.exists()


READ_CASES = [
    ("metrics", "key=loss&start=inf", "start"),
    ("metrics", "key=loss&end=-inf", "end"),
    ("metrics", "key=loss&buckets=inf", "buckets"),
    ("metrics", "key=loss&buckets=nan", "buckets"),
    ("metrics", "key=loss&start=1e400", "start"),
    ("metrics", f"key=loss&start={2**70}", "start"),
    ("metrics", "key=lo%00ss", "key"),
    ("logs", "after=inf", "after"),
    ("logs", f"after={2**64}", "after"),
]


@pytest.mark.parametrize(("path", "query", "field"), READ_CASES, ids=[q for _, q, _ in READ_CASES])
def test_bad_read_parameter_is_a_400_naming_it(researcher: User, path: str, query: str, field: str) -> None:
    run, _ = runs.create_external_run(owner=researcher, name="r", config={})
    _, key = runs.issue_api_token(user=researcher, name="k")
    answer = Client(raise_request_exception=False).get(
        f"/api/runs/{run.id}/{path}/?{query}", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field


def test_run_ids_past_the_column_range_are_404_not_500(researcher: User) -> None:
    _, key = runs.issue_api_token(user=researcher, name="k")
    client = Client(raise_request_exception=False)
    for path in (f"/api/runs/{2**64}/", f"/api/runs/{2**64}/metrics/?key=loss", f"/api/runs/{2**63}/logs/"):
        assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 404, path
    assert post(f"/api/runs/{2**64}/metrics/", {"points": []}, "arb_r_x").status_code == 401


def test_valid_edge_values_are_accepted(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    top = 2**62 - 1
    metrics = {"points": [{"key": "k", "step": top, "value": 1.0}]}
    assert post(f"/api/runs/{run.id}/metrics/", metrics, token).status_code == 200
    inside = f"{settings.ARTIFACT_ROOT}/runs/{run.id}/c"  # checkpoints lie inside the run's own location
    assert post(f"/api/runs/{run.id}/checkpoints/", {"step": top, "path": inside}, token).status_code == 200
    status = {"status": "failed", "exit_code": -(2**31)}
    assert post(f"/api/runs/{run.id}/status/", status, token).status_code == 200
    assert Run.objects.get(id=run.id).exit_code == -(2**31)
