"""End to end on CPU with the tiny model: two checkpoints of one run → a pairwise study → judgments → results and a
leaderboard that name the checkpoints. Real PostgreSQL, Redis, Celery worker, engine subprocesses (run and sampler)."""

from __future__ import annotations

from typing import Any

import pytest

from evaluation.models import Item
from loop.models import ItemSource, SampleJob, SampleStatus
from tests.loop.conftest import judge
from tests.training.conftest import wait_for, wait_status
from training.models import RunStatus, RunTable
from training.services.runs import launch_run

pytestmark = pytest.mark.django_db(transaction=True)

TINY_GRPO = {
    "max_steps": 6,
    "sft_warmup_steps": 3,
    "save_steps": 3,
    "batch_size": 4,
    "num_generations": 2,
    "num_threads": 1,
    "tiny_hidden_size": 32,
    "tiny_num_layers": 1,
    "tiny_num_heads": 2,
}


def test_two_checkpoints_of_a_run_become_a_judged_study_and_a_leaderboard(
    researcher: Any, annotator: Any, live_stack: Any, client_for: Any
) -> None:
    run = launch_run(owner=researcher, recipe="demo_grpo", config=TINY_GRPO, name="grpo-tiny")
    run = wait_status(run, {RunStatus.SUCCEEDED, RunStatus.FAILED}, timeout=240)
    assert run.status == RunStatus.SUCCEEDED, list(run.log_lines.values_list("text", flat=True))[-20:]
    checkpoints = list(run.checkpoints.order_by("step"))
    assert [c.step for c in checkpoints] == [3, 6]
    # Samples while training: the engine logged its last generation batch through the SDK's table endpoint.
    (table,) = RunTable.objects.filter(run=run)
    assert table.step == 6 and table.columns[:3] == ["prompt", "completion", "reward"] and len(table.rows) == 8

    client = client_for(researcher)
    response = client.post(
        f"/samples/new/?run={run.pk}",
        {
            "checkpoints": [c.pk for c in checkpoints],
            "prompt_source": "run",
            "prompt_run": run.pk,
            "max_prompts": 6,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": 4,
            "n": 2,
            "seed": 1,
            "backend": "auto",
            "queue": "gpu",
            "study_kind": "pairwise",
            "overlap": 1,
            "annotators": [annotator.pk],
            "name": "step 3 vs step 6",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = SampleJob.objects.get()

    def finished() -> SampleJob | None:
        job.refresh_from_db()
        assert job.status not in {SampleStatus.FAILED, SampleStatus.CANCELLED}, job.error
        return job if job.status == SampleStatus.DONE else None

    wait_for(finished, timeout=180, what="the sampling job")
    assert (job.done, job.total, job.backend) == (24, 24, "hf")
    assert job.seconds and job.seconds > 0
    study = job.study
    assert study is not None and study.kind == "pairwise"
    items = list(Item.objects.filter(study=study))
    assert len(items) + job.skipped_identical + job.notes.count("empty") >= 1
    assert len(items) == study.item_count > 0
    labels = {f"#{run.pk} grpo-tiny @ step 3", f"#{run.pk} grpo-tiny @ step 6"}
    for item in items:
        sources = {s.side: s.policy for s in ItemSource.objects.filter(item=item).select_related("policy")}
        assert {sources["a"].label, sources["b"].label} == labels
        assert {sources["a"].checkpoint_id, sources["b"].checkpoint_id} == {c.pk for c in checkpoints}

    # The annotator prefers step 6 every time; the results and the leaderboard say so, by checkpoint name.
    choices = []
    for item in Item.objects.filter(study=study).order_by("position", "id"):
        a = ItemSource.objects.get(item=item, side="a").policy
        choices.append("a" if a.step == 6 else "b")
    judge(study, annotator, choices)
    results = client.get(f"/studies/{study.pk}/results/").content.decode()
    assert all(label in results for label in labels)
    board = client.get(f"/api/leaderboard/?run={run.pk}").json()["standings"]
    assert [s["policy"]["step"] for s in board] == [3, 6]
    assert board[1]["rating"] > board[0]["rating"] and board[1]["wins"] == len(items)
    page = client.get(f"/models/runs/{run.pk}/").content.decode()
    assert 'data-chart="bt-steps"' in page and 'data-reward-key="reward"' in page
