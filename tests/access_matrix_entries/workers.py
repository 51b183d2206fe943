"""The worker API (/api/worker/…): a worker credential, never a session (tests/workers cover the tokens)."""

from __future__ import annotations

from typing import Any

from tests.access_matrix_entries import Access


def _run(owner: Any) -> dict[str, Any]:
    from training.models import Run

    return {"run_id": Run.objects.create(owner=owner, name="matrix", recipe="demo", status="queued").id}


def _sample_job(owner: Any) -> dict[str, Any]:
    from loop.models import SampleJob

    job = SampleJob.objects.create(owner=owner, name="matrix", study_kind="pairwise", total=1)
    return {"job_id": job.pk}


ENTRIES = {
    "workers_api:sample_claim": Access(auth="token", objects="sample_job", method="post"),
    "workers_api:sample_progress": Access(auth="token", objects="sample_job", method="post"),
    "workers_api:sample_finish": Access(auth="token", objects="sample_job", method="post"),
    "workers_api:hello": Access(auth="token", method="post"),
    "workers_api:claim": Access(auth="token", objects="worker_run", method="post"),
    "workers_api:heartbeat": Access(auth="token", objects="worker_run", method="post"),
    "workers_api:finish": Access(auth="token", objects="worker_run", method="post"),
}
BUILDERS: dict[str, object] = {"worker_run": _run, "sample_job": _sample_job}
