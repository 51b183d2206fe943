"""Access entries for the loop app's URLs (models and leaderboard, sampling jobs, lineage cards, its API)."""

from __future__ import annotations

from typing import Any

from tests.access_matrix_entries import RESEARCHERS, Access


def sample_job(owner: Any) -> dict[str, Any]:
    from loop.models import PromptSource, SampleJob, SampleJobPolicy
    from loop.services.policies import policy_for_model

    job = SampleJob.objects.create(
        owner=owner, name="matrix", study_kind="pairwise", prompt_source=PromptSource.FILE, prompt_label="x", total=2
    )
    for i, path in enumerate(("org/a", "org/b")):
        SampleJobPolicy.objects.create(job=job, policy=policy_for_model(path=path), position=i)
    return {"job_id": job.pk}


ENTRIES = {
    "loop:models": Access(roles=RESEARCHERS),
    "loop:sample_new": Access(roles=RESEARCHERS),
    "loop:sample_job": Access(roles=RESEARCHERS, objects="sample_job"),
    "loop:sample_job_status": Access(roles=RESEARCHERS, objects="sample_job"),
    # The owner cancels (302); the admin, after it, finds the job already cancelled (409): both were let in.
    "loop:sample_job_cancel": Access(roles=RESEARCHERS, objects="sample_job", method="post"),
    "loop:run_lineage": Access(roles=RESEARCHERS, objects="run"),
    "loop:run_leaderboard": Access(roles=RESEARCHERS, objects="run"),
    "loop:study_lineage": Access(roles=RESEARCHERS, objects="study"),
    "loop:send_table_rows": Access(roles=RESEARCHERS, objects="run_with_table"),
    "loop_api:run_lineage": Access(roles=RESEARCHERS, objects="run"),
    "loop_api:study_lineage": Access(roles=RESEARCHERS, objects="study"),
    "loop_api:leaderboard": Access(roles=RESEARCHERS),
}
BUILDERS: dict[str, Any] = {"sample_job": sample_job}
