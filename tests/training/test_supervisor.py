"""The supervisor's pieces that need no worker: the engine's environment and spec."""

from __future__ import annotations

import json
from typing import Any

import pytest

from arbiter.accounts.models import User
from training.services import runs, supervisor

pytestmark = pytest.mark.django_db


def test_engine_env_carries_gpu_slot_api_url_and_run_token_but_no_django(
    researcher: User, make_run: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.ARBITER_GPU_SLOT = "3"
    settings.ARBITER_PUBLIC_URL = "http://web:8000"
    monkeypatch.setenv("DATABASE_URL", "postgres://secret")
    run = make_run(researcher, status="queued")
    env = supervisor.engine_env(run=run, token="arb_r_x")
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert (env["ARBITER_API_URL"], env["ARBITER_RUN_ID"], env["ARBITER_RUN_TOKEN"]) == (
        "http://web:8000",
        str(run.id),
        "arb_r_x",
    )
    assert "DATABASE_URL" not in env and "DJANGO_SETTINGS_MODULE" not in env


def test_spec_names_the_checkpoint_to_resume_from(
    researcher: User, make_run: Any, settings: Any, tmp_path: Any
) -> None:
    settings.ARTIFACT_ROOT = tmp_path
    run = make_run(researcher, status="queued", config={"max_steps": 3}, resume_from="/x/checkpoint-2")
    spec = json.loads(supervisor.write_spec(run).read_text())
    assert spec == {
        "run_id": run.id,
        "recipe": "demo",
        "config": {"max_steps": 3},
        "output_dir": str(tmp_path / "runs" / str(run.id)),
        "resume_from": "/x/checkpoint-2",
        "seed": 0,
    }


def test_a_run_is_claimed_once(researcher: User, make_run: Any) -> None:
    run = make_run(researcher, status="queued")
    first = runs.claim_run(run_id=run.id, worker="w1")
    assert first is not None and first[0].status == "running" and first[1].startswith("arb_r_")
    assert runs.claim_run(run_id=run.id, worker="w2") is None
    run.refresh_from_db()
    assert run.worker == "w1"


def test_sweep_marks_runs_with_a_stale_heartbeat_lost_script_runs_included(researcher: User, make_run: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(minutes=10)
    stale = make_run(researcher, status="running", started_at=old, heartbeat_at=old)
    fresh = make_run(researcher, status="running", started_at=old, heartbeat_at=timezone.now())
    external = make_run(researcher, status="running", recipe="external", started_at=old, heartbeat_at=old)
    # A script's run (arbiter_client.init) keeps its own heartbeat: silent for too long, it is lost too.
    assert sorted(runs.mark_lost_runs(timeout_s=60)) == sorted([stale.id, external.id])
    assert {r.id: r.status for r in (stale, fresh, external) if not r.refresh_from_db()} == {
        stale.id: "lost",
        fresh.id: "running",
        external.id: "lost",
    }
