"""Celery tasks of the training app: thin wrappers that fetch by id and call a service."""

from __future__ import annotations

import socket

from celery import Task, shared_task

from arbiter.celery import Queue
from training.services import ingest, run_records, runs, supervisor

# A run may last days: the hard limit only stops a supervisor that somehow never returns.
SUPERVISE_TIME_LIMIT_S = 14 * 24 * 3600


@shared_task(
    bind=True,
    name="training.supervise_run",
    queue=Queue.GPU,
    ignore_result=True,
    acks_late=False,
    time_limit=SUPERVISE_TIME_LIMIT_S,
    soft_time_limit=SUPERVISE_TIME_LIMIT_S - 60,
)
def supervise_run(self: Task, run_id: int) -> None:
    """Own one run's engine subprocess until it exits.

    Acked early on purpose: a run outlives the broker's redelivery window, and a late ack would
    start it twice. If this worker dies, the heartbeat sweep marks the run lost; the claim below
    makes a duplicate delivery a no-op.
    """
    claimed = runs.claim_run(run_id=run_id, worker=self.request.hostname or socket.gethostname())
    if claimed is None:
        return  # duplicate delivery, or cancelled while queued
    run, token = claimed
    supervisor.run_engine(run=run, token=token)


@shared_task(name="training.sweep_lost_runs", queue=Queue.DEFAULT, ignore_result=True, time_limit=120)
def sweep_lost_runs() -> list[int]:
    """Beat task: runs whose heartbeat stopped are marked lost."""
    return runs.mark_lost_runs()


@shared_task(name="training.prune_metric_keys", queue=Queue.DEFAULT, ignore_result=True, time_limit=600)
def prune_metric_keys() -> int:
    """Beat task: metric names no run uses any more (their runs were deleted) are deleted."""
    return ingest.prune_unused_metric_keys()


class FilesLeft(Exception):
    """Some of a deleted run's files could not be removed yet (named); the task retries."""


@shared_task(
    bind=True,
    name="training.remove_run_files",
    queue=Queue.DEFAULT,
    ignore_result=True,
    acks_late=True,  # a worker killed mid-removal leaves the message to be delivered again: removal is idempotent
    reject_on_worker_lost=True,
    max_retries=8,
    time_limit=3600,
)
def remove_run_files(self: Task, run_id: int, places: list[str]) -> None:
    """A deleted run's files leave the artifact store (run_records.delete_run queues this after its commit).
    Places that fail are retried with back-off (1 s doubling to ~4 min), then left in the log for an admin."""
    failed = run_records.remove_run_files_now(run_id=run_id, places=places)
    if failed:
        raise self.retry(args=(run_id, failed), exc=FilesLeft(", ".join(failed)), countdown=2**self.request.retries)
