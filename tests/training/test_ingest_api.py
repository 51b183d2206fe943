"""The ingest API over HTTP: tokens, idempotency, refusal of bad batches, run creation with API keys, reads."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from django.test import Client

from arbiter.accounts.models import User
from training.models import LogLine, MetricSummary, Run
from training.selectors import stored_points
from training.services import runs

# The ingest views do their database work in a pool thread (another connection): committed data only.
pytestmark = pytest.mark.django_db(transaction=True)


def post(path: str, body: Any, token: str, *, gz: bool = True) -> Any:
    raw = json.dumps(body).encode()
    extra: dict[str, str] = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if gz:
        raw = gzip.compress(raw)
        extra["HTTP_CONTENT_ENCODING"] = "gzip"
    return Client().post(path, data=raw, content_type="application/json", **extra)


def batch(key: str = "loss", steps: range = range(100)) -> dict[str, Any]:
    return {"points": [{"key": key, "step": s, "value": 1.0 / (s + 1), "time": 1.7e9 + s} for s in steps]}


def test_resent_batch_writes_no_duplicates(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    first = post(f"/api/runs/{run.id}/metrics/", batch(), token)
    again = post(f"/api/runs/{run.id}/metrics/", batch(), token)
    assert first.status_code == again.status_code == 200
    assert (first.json()["written"], again.json()["written"]) == (100, 0)
    assert stored_points(run_id=run.id) == 100
    summary = MetricSummary.objects.get(run=run, key__name="loss")
    assert (summary.n, summary.last_step, summary.last_value) == (100, 99, pytest.approx(0.01))


def test_overlapping_batch_writes_only_the_new_points(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    post(f"/api/runs/{run.id}/metrics/", batch(steps=range(50)), token)
    answer = post(f"/api/runs/{run.id}/metrics/", batch(steps=range(25, 75)), token)
    assert answer.json()["written"] == 25
    assert MetricSummary.objects.get(run=run, key__name="loss").n == 75


def test_wrong_token_is_refused_and_writes_nothing(external_run: tuple[Run, str], researcher: User) -> None:
    run, _ = external_run
    _other, other_token = runs.create_external_run(owner=researcher, name="other", config={})
    for token in ("arb_r_wrong", other_token, ""):
        assert post(f"/api/runs/{run.id}/metrics/", batch(), token).status_code == 401
    assert stored_points(run_id=run.id) == 0


def test_bad_batch_gets_400_naming_the_field_and_nothing_is_written(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    body = batch(steps=range(10))
    body["points"][7]["value"] = "NaN"
    answer = post(f"/api/runs/{run.id}/metrics/", body, token)
    assert answer.status_code == 400
    assert answer.json()["field"] == "points[7].value"
    assert stored_points(run_id=run.id) == 0


def test_invalid_json_and_bad_gzip_are_400(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert (
        Client().post(f"/api/runs/{run.id}/metrics/", data=b"{", content_type="application/json", **auth).status_code
        == 400
    )
    assert (
        Client()
        .post(
            f"/api/runs/{run.id}/metrics/",
            data=b"nope",
            content_type="application/json",
            HTTP_CONTENT_ENCODING="gzip",
            **auth,
        )
        .json()["field"]
        == "body"
    )


def test_log_lines_are_idempotent_per_stream_and_seq(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    lines = {"lines": [{"seq": i, "stream": "client", "text": f"line {i}"} for i in range(5)]}
    post(f"/api/runs/{run.id}/logs/", lines, token)
    post(f"/api/runs/{run.id}/logs/", lines, token, gz=False)
    assert LogLine.objects.filter(run=run).count() == 5


def test_system_samples_become_system_metrics(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    answer = post(
        f"/api/runs/{run.id}/system/", {"samples": [{"seq": 0, "cpu_percent": 12.5, "memory_percent": 40}]}, token
    )
    assert answer.json()["written"] == 2
    assert set(MetricSummary.objects.filter(run=run).values_list("key__name", flat=True)) == {
        "system/cpu_percent",
        "system/memory_percent",
    }


def test_api_key_creates_a_run_whose_token_reports(researcher: User) -> None:
    _, key = runs.issue_api_token(user=researcher, name="k")
    created = post("/api/runs/", {"name": "from-script", "config": {"lr": 1}, "tags": ["x"]}, key)
    assert created.status_code == 201
    data = created.json()
    run = Run.objects.get(id=data["id"])
    assert (run.owner, run.status, run.recipe) == (researcher, "running", "external")
    assert post(f"/api/runs/{run.id}/metrics/", batch(), data["token"]).status_code == 200
    done = post(f"/api/runs/{run.id}/status/", {"status": "succeeded", "exit_code": 0}, data["token"])
    assert done.json()["status"] == "succeeded"
    assert list(run.transitions.values_list("status", flat=True)) == ["running", "succeeded"]


def test_annotator_key_and_revoked_key_cannot_create_runs(researcher: User, annotator: User) -> None:
    token, key = runs.issue_api_token(user=researcher, name="k")
    runs.revoke_api_token(token=token)
    assert post("/api/runs/", {"name": "x"}, key).status_code == 401
    # An annotator cannot even hold a key; a key row forged for one is still refused.
    from training.models import ApiToken, hash_token

    ApiToken.objects.create(user=annotator, name="forged", token_hash=hash_token("arb_u_forged"), prefix="arb_u_forg")
    assert post("/api/runs/", {"name": "x"}, "arb_u_forged").status_code == 403
    assert not Run.objects.exists()


def test_platform_run_status_belongs_to_its_supervisor(researcher: User, make_run: Any) -> None:
    run = make_run(researcher, status="running", started_at="2026-01-01T00:00Z", token_hash="")
    plain = "arb_r_platform"
    from training.models import hash_token

    Run.objects.filter(id=run.id).update(token_hash=hash_token(plain))
    assert post(f"/api/runs/{run.id}/status/", {"status": "succeeded"}, plain).status_code == 409


def test_chart_read_is_downsampled_then_full_resolution_when_zoomed(
    external_run: tuple[Run, str], client_for: Any, researcher: User
) -> None:
    run, token = external_run
    for start in range(0, 100_000, 20_000):
        body = {
            "points": [
                {"key": "loss", "step": s, "value": float((s * 7919) % 1000), "time": 1.7e9 + s}
                for s in range(start, start + 20_000)
            ]
        }
        assert post(f"/api/runs/{run.id}/metrics/", body, token).json()["written"] == 20_000
    client = client_for(researcher)
    whole = client.get(f"/api/runs/{run.id}/metrics/", {"key": "loss", "buckets": 500}).json()
    assert whole["downsampled"] and whole["total"] == 100_000
    assert 500 <= len(whole["points"]) <= 1000
    assert max(p[1] for p in whole["points"]) == 999.0 and min(p[1] for p in whole["points"]) == 0.0
    zoom = client.get(
        f"/api/runs/{run.id}/metrics/", {"key": "loss", "start": 5000, "end": 5299, "buckets": 500}
    ).json()
    assert not zoom["downsampled"]
    assert [p[0] for p in zoom["points"]] == list(range(5000, 5300))


def test_rollup_read_matches_downsampling_the_raw_points(external_run: tuple[Run, str]) -> None:
    from training import selectors
    from training.downsample import minmax_points

    run, token = external_run
    body = {
        "points": [
            {"key": "r", "step": s, "value": float((s * 31337) % 977), "time": float(s)} for s in range(0, 40_960)
        ]
    }
    post(f"/api/runs/{run.id}/metrics/", body, token)
    series = selectors.metric_series(run_id=run.id, key="r", buckets=40)
    raw = [(s, float((s * 31337) % 977), float(s)) for s in range(0, 40_960)]
    assert [tuple(p) for p in series["points"]] == minmax_points(raw, buckets=40, lo=0, hi=40_960)


# Issue 12 item 3: a run token writes only while its run is queued or running.
ENDED_BODIES: dict[str, dict[str, Any]] = {
    "metrics": batch(steps=range(5)),
    "logs": {"lines": [{"seq": 0, "stream": "client", "text": "after the end"}]},
    "system": {"samples": [{"seq": 0, "cpu_percent": 1.0}]},
    "checkpoints": {"step": 5, "path": "checkpoints/after-the-end"},
    "status": {"status": "failed", "exit_code": 1},
}


@pytest.mark.parametrize("ended", ["succeeded", "failed", "cancelled", "lost"])
def test_a_run_token_stops_writing_once_its_run_has_ended(external_run: tuple[Run, str], ended: str) -> None:
    run, token = external_run
    assert post(f"/api/runs/{run.id}/metrics/", batch(steps=range(3)), token).status_code == 200
    # "lost" as a supervised run: a script's run the sweep marked lost keeps its token and is revived by
    # its next report (test_client.py::test_a_script_that_dies_without_finishing_becomes_lost_and_revives…).
    Run.objects.filter(id=run.id).update(status=ended, **({"recipe": "demo"} if ended == "lost" else {}))
    for endpoint, body in ENDED_BODIES.items():
        answer = post(f"/api/runs/{run.id}/{endpoint}/", body, token)
        assert answer.status_code == 401, (endpoint, answer.content)
        assert f"has ended ({ended})" in answer.json()["error"]
    assert stored_points(run_id=run.id) == 3
    assert not LogLine.objects.filter(run=run).exists()
    assert not run.checkpoints.exists()
    assert Run.objects.get(id=run.id).status == ended


def test_a_finished_run_token_is_refused_through_the_status_it_reported(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    assert post(f"/api/runs/{run.id}/status/", {"status": "succeeded", "exit_code": 0}, token).status_code == 200
    assert post(f"/api/runs/{run.id}/metrics/", batch(steps=range(3)), token).status_code == 401
    assert stored_points(run_id=run.id) == 0
