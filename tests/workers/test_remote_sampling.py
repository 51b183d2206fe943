"""Issue 11.3's last arrow on a remote worker: two checkpoints in the bucket → "Sample into a study" sampled by the
Django-free worker (models downloaded into its scratch, completions up to the bucket) → a blinded pairwise study."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from loop.models import SampleJob, SampleStatus
from loop.services.sampling import SamplingSettings, StudyOptions, create_sample_job
from tests.training.conftest import wait_for, wait_status
from training.models import RunStatus
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)

TINY_GRPO = {
    "max_steps": 4,
    "sft_warmup_steps": 2,
    "save_steps": 2,
    "batch_size": 4,
    "num_generations": 2,
    "num_threads": 1,
    "tiny_hidden_size": 32,
    "tiny_num_layers": 1,
    "tiny_num_heads": 2,
}


def test_checkpoints_in_the_bucket_are_sampled_into_a_study_on_the_remote_worker(
    deployment: Any, researcher: User, annotator: User
) -> None:
    deployment.start_worker(name="gpu-host-3")
    run = runs.launch_run(owner=researcher, recipe="demo_grpo", config=TINY_GRPO, queue=deployment.queue)
    run = wait_status(run, {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.LOST}, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, list(run.log_lines.values_list("text", flat=True))[-20:]
    checkpoints = list(run.checkpoints.order_by("step"))
    assert [c.path.startswith("s3://") for c in checkpoints] == [True, True]
    job = create_sample_job(
        owner=researcher,
        name="step 2 vs step 4",
        study_kind="pairwise",
        checkpoints=checkpoints,
        prompts=[{"prompt": f"{a}+{a}="} for a in range(3)],
        prompt_source="file",
        prompt_label="inline",
        sampling=SamplingSettings(max_new_tokens=4, n=1, seed=1, backend="hf"),
        options=StudyOptions(overlap=1, annotators=[annotator], skip_identical=False),
        queue=deployment.queue,
    )

    def finished() -> SampleJob | None:
        job.refresh_from_db()
        assert job.status not in {SampleStatus.FAILED, SampleStatus.CANCELLED}, job.error
        return job if job.status == SampleStatus.DONE else None

    job = wait_for(finished, timeout=300, what="the sampling job")
    assert job.worker == "gpu-host-3" and job.done == job.total == 6
    assert job.study is not None and job.study.items.count() == 3
