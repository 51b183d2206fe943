"""Runs end to end: a real Celery worker supervises the real engine subprocess, which reports over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from django.core.exceptions import ValidationError

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


def _loss_points(run: Run) -> int:
    return MetricSummary.objects.get(run=run, key__name="loss").n


def _said_resumed(run: Run) -> bool:
    return LogLine.objects.filter(run=run, text__contains="resumed from").exists()


@pytest.mark.timeout(300)
def test_retry_of_a_resumed_run_starts_from_step_one_and_is_named_a_retry(
    live_stack: Any, researcher: User, client_for: Any
) -> None:
    """Three real runs: cancelled midway, resumed from its checkpoint, then the resume retried from scratch."""
    config = {**FAST_DEMO, "max_steps": 20, "save_steps": 5, "step_delay_s": 0.25}
    first = runs.launch_run(owner=researcher, recipe="demo", config=config, name="exp")
    wait_for(lambda: first.checkpoints.filter(step=5).exists(), timeout=120, what="the first checkpoint")
    runs.cancel_run(run=first, by=researcher)
    first = wait_status(first, {"cancelled", "failed", "succeeded"})
    assert first.status == "cancelled"
    newest = first.checkpoints.order_by("-step").first()
    assert newest is not None and newest.step < 20

    resumed = runs.resume_run(run=first, by=researcher)
    assert (resumed.origin, resumed.parent, resumed.resume_checkpoint) == ("resume", first, newest)
    assert resumed.name == f"exp (resumed @{newest.step})" and resumed.resume_from == newest.path
    assert wait_status(resumed, {"succeeded", "failed"}).status == "succeeded"
    assert _said_resumed(resumed) and _loss_points(resumed) == 20 - newest.step

    retried = runs.retry_run(run=resumed, by=researcher)
    assert retried.name == "exp (retry 1)"
    assert (retried.origin, retried.parent, retried.resume_from) == ("retry", resumed, "")
    assert retried.config == first.config
    assert wait_status(retried, {"succeeded", "failed"}).status == "succeeded"
    assert not _said_resumed(retried) and _loss_points(retried) == 20  # steps 1..20, from scratch

    # The next retry anywhere in the family is the second; a retry has no checkpoint of another run to resume.
    again = runs.retry_run(run=retried, by=researcher)
    runs.cancel_run(run=again, by=researcher)
    assert again.name == "exp (retry 2)"
    with pytest.raises(ValidationError, match="no checkpoint to resume from"):
        runs.resume_run(run=again, by=researcher)

    # A resume that wrote no checkpoint of its own: resuming it continues from the run it resumed.
    stalled = runs.resume_run(run=first, by=researcher)
    runs.cancel_run(run=stalled, by=researcher)
    onward = runs.resume_run(run=stalled, by=researcher)
    runs.cancel_run(run=onward, by=researcher)
    assert (onward.parent, onward.resume_checkpoint) == (stalled, newest)
    assert onward.resume_from == newest.path and onward.name == f"exp (resumed @{newest.step})"

    # The run page links both ways: the parent it resumed, and its children with how each was made.
    html = client_for(researcher).get(f"/runs/{resumed.id}/").content.decode()
    family = html[html.index('id="run-family"') : html.index("</nav>", html.index('id="run-family"'))]
    assert f'href="/runs/{first.id}/">#{first.id} exp</a>' in family and "Resumed from" in family
    assert f'href="/runs/{retried.id}/" data-origin="retry">#{retried.id} exp (retry 1)</a>' in family
    page = client_for(researcher).get(f"/runs/{onward.id}/").content.decode()
    assert f"at its step {newest.step} (a checkpoint of" in page and f'href="/runs/{first.id}/"' in page


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


def test_names_and_resume_points_follow_the_family(researcher: User, make_run: Any) -> None:
    """Without running anything: names strip the chain's suffixes, resume points follow resume links only."""
    root = make_run(researcher, name="exp", config=FAST_DEMO)
    checkpoint = root.checkpoints.create(step=5, path="/a/checkpoint-5")
    resumed = runs.resume_run(run=root, by=researcher)
    assert resumed.name == "exp (resumed @5)" and runs.resume_point(resumed) == checkpoint
    Run.objects.filter(id=resumed.id).update(status="failed")
    resumed.refresh_from_db()
    retry = runs.retry_run(run=resumed, by=researcher)
    assert retry.name == "exp (retry 1)" and retry.resume_from == ""
    assert runs.resume_point(retry) is None  # its training began at step 1: the family's checkpoints are not its own
    assert runs.retry_run(run=root, by=researcher).name == "exp (retry 2)"
    assert runs.lineage_base_name("a (b) (resumed @3) (retry 12)") == "a (b)"
