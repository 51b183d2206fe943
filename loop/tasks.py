"""Celery tasks of the loop app: thin wrappers that fetch by id and call a service."""

from __future__ import annotations

import socket

from celery import Task, shared_task

from arbiter.celery import Queue

# A job samples at most 20,000 completions; six hours is a stuck worker, not a slow one.
SAMPLE_TIME_LIMIT_S = 6 * 3600


@shared_task(
    bind=True,
    name="loop.run_sample_job",
    queue=Queue.GPU,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=SAMPLE_TIME_LIMIT_S,
    soft_time_limit=SAMPLE_TIME_LIMIT_S - 60,
)
def run_sample_job(self: Task, job_id: int) -> None:
    """Sample one job's completions and make its study.

    Acked late (short work, per the house rules): a message lost with its worker is delivered again, and
    the claim (queued → running, once) makes any second delivery a no-op; a job whose worker died while
    running is failed by the sweep below.
    """
    from loop.services import sample_worker, sampling

    job = sampling.claim_sample_job(job_id=job_id, worker=self.request.hostname or socket.gethostname())
    if job is None:
        return  # duplicate delivery, or cancelled while queued
    sample_worker.run_sample_job(job=job)


@shared_task(name="loop.sweep_stale_sample_jobs", queue=Queue.DEFAULT, ignore_result=True, time_limit=120)
def sweep_stale_sample_jobs() -> list[int]:
    """Beat task: running sampling jobs whose worker stopped reporting are failed, saying so."""
    from loop.services import sampling

    return sampling.mark_stale_sample_jobs()
