"""Issue 11.4: two workers with different slots on different queues. A run lands only where its queue is served
and its GPUs are free (more GPUs than any worker of its queue has is refused at launch; a worker whose slots are
busy hands the task back: tests/workers/test_worker_api.py); killing one worker mid-run makes its run lost at the
heartbeat sweep while the other worker's run keeps beating."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from arbiter.accounts.models import User
from tests.training.conftest import wait_for, wait_status
from training.models import Run, RunStatus
from training.services import runs
from workers.models import WorkerCredential

pytestmark = pytest.mark.django_db(transaction=True)

LONG = {"max_steps": 100_000, "step_delay_s": 0.2, "save_steps": 100_000, "num_threads": 1}
SHORT = {"max_steps": 4, "step_delay_s": 0.0, "save_steps": 2, "num_threads": 1}
SWEEP_TIMEOUT_S = 20  # the web tier's workers beat every 5 s (a sixth of the default 60 s, at most 5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_placement_by_queue_and_slots_and_a_killed_worker_loses_only_its_own_run(
    deployment: Any, researcher: User, settings: Any
) -> None:
    small, big = deployment.queue, f"{deployment.queue}-big"
    settings.ARBITER_RUN_QUEUES = [small, big]
    one = deployment.start_worker(name="one-slot", slots="cpu0", queue=small)
    deployment.start_worker(name="two-slots", slots="cpu0,cpu1", queue=big)

    # Both said hello (queues and slots): two GPUs on the queue of a one-slot worker are refused at launch.
    wait_for(lambda: WorkerCredential.objects.exclude(slots=[]).count() == 2, timeout=60, what="both workers' hello")
    with pytest.raises(ValidationError) as refused:
        runs.launch_run(owner=researcher, recipe="demo", config=SHORT, queue=small, gpus=2, name="too big")
    assert list(refused.value.message_dict) == ["gpus"]
    # Two GPUs on the two-slot worker: torchrun with two processes.
    pair = runs.launch_run(owner=researcher, recipe="demo", config=SHORT, queue=big, gpus=2, name="pair")
    pair = wait_status(pair, {RunStatus.SUCCEEDED, RunStatus.FAILED}, timeout=240)
    assert pair.status == RunStatus.SUCCEEDED, list(pair.log_lines.values_list("text", flat=True))[-20:]
    assert pair.worker == "two-slots"

    doomed = runs.launch_run(owner=researcher, recipe="demo", config=LONG, queue=small, name="doomed")
    survivor = runs.launch_run(owner=researcher, recipe="demo", config=LONG, queue=big, name="survivor")
    for run in (doomed, survivor):
        wait_for(lambda r=run: Run.objects.filter(id=r.id, status=RunStatus.RUNNING, pid__isnull=False).exists(),
                 timeout=120, what=f"run {run.name} running with an engine")  # fmt: skip
    doomed.refresh_from_db()
    assert doomed.worker == "one-slot"

    one.send_signal(signal.SIGKILL)  # the host goes away mid-run
    one.wait()
    # Its engine dies with it (PR_SET_PDEATHSIG; also its stdout pipe breaks): nothing trains on unsupervised.
    wait_for(lambda: not _alive(doomed.pid), timeout=30, what="the orphaned engine to die")
    wait_for(lambda: doomed.id in runs.mark_lost_runs(timeout_s=SWEEP_TIMEOUT_S), timeout=120, what="the sweep")
    survivor.refresh_from_db()
    doomed.refresh_from_db()
    assert (doomed.status, survivor.status) == (RunStatus.LOST, RunStatus.RUNNING)
    # The other worker keeps working: its run still beats, and obeys a cancel.
    beat = survivor.heartbeat_at
    wait_for(lambda: Run.objects.get(id=survivor.id).heartbeat_at > beat, timeout=30, what="the survivor's next beat")
    runs.cancel_run(run=survivor, by=researcher)
    assert wait_status(survivor, {RunStatus.CANCELLED, RunStatus.FAILED}, timeout=60).status == RunStatus.CANCELLED
