"""Runs end to end: a real Celery worker supervises the real engine subprocess, which reports over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from arbiter.accounts.models import User
from tests.conftest import ROOT, platform_env
from tests.training.conftest import FAST_DEMO, wait_for, wait_status
from training.models import LogLine, MetricSummary, Run
from training.services import runs
from training.tasks import sweep_lost_runs


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_launched_run_trains_reports_and_succeeds(live_stack: Any, researcher: User) -> None:
    run = runs.launch_run(owner=researcher, recipe="demo", config=FAST_DEMO, name="e2e", tags=["t"])
    run = wait_status(run, {"succeeded", "failed"})
    assert run.status == "succeeded", list(LogLine.objects.filter(run=run).values_list("text", flat=True))
    assert run.exit_code == 0 and run.pid and run.worker
    loss = MetricSummary.objects.get(run=run, key__name="loss")
    assert loss.n == FAST_DEMO["max_steps"]
    assert LogLine.objects.filter(run=run, stream="stdout", text__contains="step").exists()
    assert sorted(run.checkpoints.values_list("step", flat=True))[-1] == FAST_DEMO["max_steps"]
    assert list(run.transitions.values_list("status", flat=True)) == ["queued", "running", "succeeded"]


@pytest.mark.timeout(180)
def test_cancel_ends_the_whole_process_group(live_stack: Any, researcher: User) -> None:
    run = runs.launch_run(owner=researcher, recipe="demo", config={**FAST_DEMO, "max_steps": 5000, "step_delay_s": 0.2})
    wait_for(lambda: Run.objects.filter(id=run.id, pgid__isnull=False, status="running").exists(), what="engine start")
    run.refresh_from_db()
    assert _group_alive(run.pgid)
    runs.cancel_run(run=run, by=researcher)
    run = wait_status(run, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert run.status == "cancelled"
    assert not _group_alive(run.pgid)
    assert run.finished_at is not None


@pytest.mark.timeout(240)
def test_resume_continues_from_the_last_checkpoint(live_stack: Any, researcher: User) -> None:
    first = wait_status(
        runs.launch_run(owner=researcher, recipe="demo", config={**FAST_DEMO, "max_steps": 10}), {"succeeded", "failed"}
    )
    assert first.status == "succeeded"
    resumed = runs.resume_run(run=first, by=researcher)
    assert resumed.resume_from.endswith("checkpoint-10") and resumed.parent == first
    retried = runs.retry_run(run=first, by=researcher)
    assert retried.config == first.config and not retried.resume_from
    for run in (resumed, retried):
        assert wait_status(run, {"succeeded", "failed"}).status == "succeeded"


@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_killed_worker_leaves_a_run_the_sweep_marks_lost(
    asgi_server: Any, researcher: User, settings: Any, tmp_path: Any
) -> None:
    """SIGKILL the worker process itself: no code of ours runs, only the heartbeat sweep can notice."""
    env = platform_env(ARBITER_PUBLIC_URL=asgi_server.url, ARTIFACT_ROOT=str(tmp_path))
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "arbiter",
            "worker",
            "-P",
            "solo",
            "-Q",
            "gpu",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
    )
    run = runs.launch_run(owner=researcher, recipe="demo", config={**FAST_DEMO, "max_steps": 5000, "step_delay_s": 0.2})
    try:
        wait_for(lambda: Run.objects.filter(id=run.id, pgid__isnull=False).exists(), timeout=90, what="engine start")
        run.refresh_from_db()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        settings.RUN_HEARTBEAT_TIMEOUT = 2
        wait_for(
            lambda: sweep_lost_runs() or Run.objects.filter(id=run.id, status="lost").exists(),
            timeout=30,
            interval=1,
            what="the sweep to mark the run lost",
        )
        run.refresh_from_db()
        assert run.status == "lost" and run.finished_at is not None
        # With its supervisor gone, the engine dies at its next write to the dead pipe. On a loaded machine it
        # may still be importing torch when the worker dies (25 s measured with 2 cores shared): allow for that.
        wait_for(lambda: not _group_alive(run.pgid), timeout=90, what="the orphaned engine to exit")
    finally:
        if worker.poll() is None:
            worker.kill()
        if run.pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pgid, signal.SIGKILL)
