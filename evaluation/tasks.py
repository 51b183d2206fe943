"""Celery tasks for studies: exports, large item imports, and the sweep that returns abandoned leases to the queue."""

from __future__ import annotations

from celery import shared_task

from arbiter.celery import Queue


# Celery ships no type information: `shared_task` is the untyped boundary (the functions stay typed).
@shared_task(
    name="evaluation.run_export",
    queue=Queue.DEFAULT,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=3600,
    soft_time_limit=3540,
    ignore_result=True,
)
def run_export(export_id: int) -> None:
    """Write one export job's file; a redelivered message finds the job claimed and does nothing."""
    from evaluation import export

    export.run_export(export_id=export_id)


@shared_task(  # untyped in Celery, as above
    name="evaluation.release_expired_leases", queue=Queue.DEFAULT, time_limit=120, ignore_result=True
)
def release_expired_leases() -> int:
    """Periodic sweep (beat): the queue also sweeps its own study, so this only speeds things up."""
    from evaluation import services

    total = 0
    while released := services.release_expired_leases():
        total += released
    return total


@shared_task(  # untyped in Celery, as above
    name="evaluation.run_import",
    queue=Queue.DEFAULT,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=3600,
    soft_time_limit=3540,
    ignore_result=True,
)
def run_import(import_id: int) -> None:
    """Read one stored upload into its study; a redelivered message finds the job claimed and does nothing."""
    from evaluation import services

    services.run_import(import_id=import_id)
