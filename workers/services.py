"""What a GPU worker may do through the API: say hello, claim a run, beat, record its process, finish it.

A worker holds a credential, not database access: a GPU host needs the broker, the API URL and its slots.
A worker acts only on runs it claimed (the run's `worker` is the credential's name), so a stolen worker
token cannot end or beat anyone else's runs. The claim is the same database claim the in-process Celery
supervisor makes (training.services.runs.claim_run): a duplicate delivery claims nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from artifacts import services as artifact_services
from artifacts.access import store_base
from training.models import Run, RunStatus, hash_token, new_token
from training.services import runs
from workers.models import WorkerCredential


class NotYours(Exception):
    """The run is not one this worker claimed (or no longer running)."""


def issue_worker_credential(*, name: str, rotate: bool = False) -> tuple[WorkerCredential, str]:
    """A credential for the worker `name`; the plain token is returned once, only its hash is kept."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationError({"name": "A worker name has 1 to 100 characters."})
    plain = new_token("arb_w")
    with transaction.atomic():
        cred = WorkerCredential.objects.select_for_update().filter(name=name).first()
        if cred is not None and not rotate:
            raise ValidationError({"name": f"Worker {name!r} already has a credential (use --rotate to replace it)."})
        if cred is None:
            cred = WorkerCredential(name=name)
        cred.token_hash, cred.prefix, cred.revoked_at = hash_token(plain), plain[:12], None
        cred.save()
    return cred, plain


def worker_for_token(token: str) -> WorkerCredential | None:
    if not token.startswith("arb_w_"):
        return None
    cred = WorkerCredential.objects.filter(token_hash=hash_token(token), revoked_at__isnull=True).first()
    # compare_digest on the hash the row holds: the lookup found it by equality already; this keeps the
    # comparison constant-time should the lookup ever become a prefix match.
    if cred is None or not hmac.compare_digest(cred.token_hash, hash_token(token)):
        return None
    return cred


def hello(*, worker: WorkerCredential, queues: list[str], slots: list[str]) -> None:
    WorkerCredential.objects.filter(pk=worker.pk).update(queues=queues, slots=slots, last_seen_at=timezone.now())


def claim(*, worker: WorkerCredential, run_id: int, free_slots: int) -> dict[str, Any] | None:
    """queued → running on this worker, if it has the slots the run asks for; the engine's spec and token.

    None when the run is not queued (a duplicate delivery, a cancel) — the worker drops the task — and a
    `NeedsSlots` when the worker lacks free slots: the worker hands the task back to the queue unclaimed.
    """
    run = Run.objects.filter(id=run_id).only("id", "status", "gpus").first()
    if run is None or run.status != RunStatus.QUEUED:
        return None
    if run.gpus > free_slots:
        raise NeedsSlots(run.gpus)
    claimed = runs.claim_run(run_id=run_id, worker=worker.name)
    if claimed is None:
        return None
    run, token = claimed
    spec: dict[str, Any] = {
        "run_id": run.id,
        "recipe": run.recipe,
        "config": run.config,
        "resume_from": run.resume_from or None,
        "seed": int(run.config.get("seed", 0) or 0),
        "gpus": run.gpus,
        "token": token,
        "api_url": settings.ARBITER_PUBLIC_URL,
        "store_url": str(store_base()),
        "output_uri": str(artifact_services.run_uri(run_id=run.id)),
        "heartbeat_s": max(1.0, min(5.0, settings.RUN_HEARTBEAT_TIMEOUT / 6)),
    }
    return spec


class NeedsSlots(Exception):
    def __init__(self, gpus: int) -> None:
        super().__init__(f"the run needs {gpus} free GPU slots")
        self.gpus = gpus


def _own_run(*, worker: WorkerCredential, run_id: int) -> Run:
    run = Run.objects.filter(id=run_id, worker=worker.name).first()
    if run is None:
        raise NotYours(run_id)
    return run


def heartbeat(*, worker: WorkerCredential, run_id: int, pid: int | None = None) -> dict[str, Any]:
    """Stamp the run's heartbeat; tell the worker whether to cancel (also when the run is no longer running)."""
    run = _own_run(worker=worker, run_id=run_id)
    if pid is not None and run.pid != pid:
        runs.record_process(run_id=run.id, pid=pid, pgid=pid)
    if run.status != RunStatus.RUNNING:
        return {"cancel": True, "status": run.status}
    cancel = runs.heartbeat(run_id=run.id)
    WorkerCredential.objects.filter(pk=worker.pk).update(last_seen_at=timezone.now())
    return {"cancel": cancel, "status": RunStatus.RUNNING}


def finish(*, worker: WorkerCredential, run_id: int, exit_code: int | None, cancelled: bool, note: str) -> str:
    run = _own_run(worker=worker, run_id=run_id)
    done = runs.finish_run(run_id=run.id, exit_code=exit_code, cancelled=cancelled, note=note[:300])
    return (done or Run.objects.get(id=run.id)).status


# --- sampling jobs ("Sample into a study") on a worker ---------------------------------------------------------


def _own_sample_job(*, worker: WorkerCredential, job_id: int) -> Any:
    from loop.models import SampleJob, SampleStatus

    job = SampleJob.objects.filter(pk=job_id, worker=worker.name, status=SampleStatus.RUNNING).first()
    if job is None:
        raise NotYours(job_id)
    return job


def claim_sample(*, worker: WorkerCredential, job_id: int) -> dict[str, Any] | None:
    """queued → running on this worker; the sampler's spec with every file named by a store URI."""
    from loop.models import SampleJobPolicy
    from loop.services import sampling

    job = sampling.claim_sample_job(job_id=job_id, worker=worker.name)
    if job is None:
        return None
    folder = sampling.sample_set_dir(job.pk)
    base = store_base().child("samples", f"job-{job.pk}")
    prompts = base.child("prompts.jsonl")
    store = artifact_services.default_store()
    if artifact_services.is_remote():
        store.put_file(folder / "prompts.jsonl", prompts)  # the local copy stays: finishing reads it
    members = SampleJobPolicy.objects.filter(job=job).select_related("policy").order_by("position")
    s = job.sampling
    return {
        "job_id": job.pk,
        "models": [{"key": sampling.model_key(m.policy), "path": m.policy.model_path} for m in members],
        "prompts_uri": str(prompts),
        "output_uri": str(base.child("samples.jsonl")),
        "store_url": str(store_base()),
        "total": job.total,
        "n": int(s.get("n", 1)),
        "temperature": float(s.get("temperature", 1.0)),
        "top_p": float(s.get("top_p", 1.0)),
        "max_new_tokens": int(s.get("max_new_tokens", 64)),
        "seed": int(s.get("seed", 0)),
        "backend": str(s.get("backend", "auto")),
    }


def sample_progress(*, worker: WorkerCredential, job_id: int, done: int) -> dict[str, Any]:
    from loop.services import sampling

    job = _own_sample_job(worker=worker, job_id=job_id)
    return {"cancel": sampling.record_progress(job_id=job.pk, done=min(done, job.total))}


def finish_sample(
    *, worker: WorkerCredential, job_id: int, ok: bool, cancelled: bool, error: str, backend: str, seconds: float
) -> str:
    """Make the study from the completions the worker put in the store, or record why there is none."""
    from loop.models import SampleJob
    from loop.services import sampling

    job = _own_sample_job(worker=worker, job_id=job_id)
    if cancelled:
        sampling.fail_sample_job(job_id=job.pk, error="cancelled while sampling", cancelled=True)
    elif not ok:
        sampling.fail_sample_job(job_id=job.pk, error=error or "the sampler failed")
    else:
        if artifact_services.is_remote():
            uri = store_base().child("samples", f"job-{job.pk}", "samples.jsonl")
            artifact_services.default_store().get_file(uri, sampling.sample_set_dir(job.pk) / "samples.jsonl")
        try:
            sampling.finish_sample_job(job_id=job.pk, backend=backend[:50], seconds=seconds)
        except Exception as exc:
            sampling.fail_sample_job(job_id=job.pk, error=f"the completions could not become a study: {exc}")
    return str(SampleJob.objects.get(pk=job.pk).status)
