"""The product's loop, end to end: judgments in a human study become reward data that trains the next run.

Pairwise study → annotator verdicts → reward-data export (Celery) → "Train on this" prefills New run →
a DPO run on a real worker, whose engine subprocess reads the exported file and reports to the real server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from arbiter.accounts.models import Role, User
from evaluation import export, services
from evaluation.models import ExportStatus
from tests.evaluation.conftest import jsonl, pairwise_row
from tests.factories import UserFactory
from tests.training.conftest import wait_for, wait_status
from training.models import MetricSummary, RunStatus
from training.services.runs import launch_run

pytestmark = pytest.mark.django_db(transaction=True)

LEFT = {"choice": "left", "strength": None, "rationale": ""}


def test_study_judgments_train_a_dpo_run(researcher: User, client_for: Any, live_stack: Any) -> None:
    annotator = UserFactory(role=Role.ANNOTATOR)
    study = services.create_study(
        owner=researcher, name="helpfulness", kind="pairwise", overlap=1, annotators=[annotator]
    )
    services.import_items(study=study, data=jsonl([pairwise_row(i) for i in range(6)]))

    # The annotator prefers whatever was shown on the left; sides were randomised, so the stored
    # preference follows the swap recorded on each assignment.
    swaps = []
    while (assignment := services.next_assignment(annotator=annotator, study=study)) is not None:
        swaps.append(assignment.swapped)
        services.submit_judgment(annotator=annotator, assignment=assignment, data=LEFT)
    assert len(swaps) == 6

    job = export.start_export(study=study, requested_by=researcher, format="reward")
    job = wait_for(lambda: _finished(job.pk), timeout=60, what="the reward export")
    dataset = Path(settings.ARTIFACT_ROOT) / job.path
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == 6
    assert {"prompt", "chosen", "rejected"} <= set(rows[0])
    # Each row's chosen answer is the one shown on the left, un-swapped back to the file's A/B order.
    for row, swapped in zip(sorted(rows, key=lambda r: r["prompt"]), swaps_by_prompt(study, swaps), strict=True):
        expected = "_B" if swapped else "**A"
        assert expected in row["chosen"]

    # "Train on this": the results page links to New run with the dataset prefilled.
    page = client_for(researcher).get(f"/runs/new/?recipe=dpo&dataset={dataset}")
    assert page.status_code == 200
    assert str(dataset) in page.content.decode()

    run = launch_run(
        owner=researcher,
        recipe="dpo",
        config={"dataset_path": str(dataset), "max_steps": 4, "batch_size": 4, "save_steps": 4, "num_threads": 1},
        name="dpo-from-study",
        queue="gpu",
    )
    run = wait_status(run, {RunStatus.SUCCEEDED, RunStatus.FAILED}, timeout=180)
    assert run.status == RunStatus.SUCCEEDED, list(run.log_lines.values_list("text", flat=True))[-20:]
    keys = set(MetricSummary.objects.filter(run=run).values_list("key__name", flat=True))
    assert {"loss", "rewards/accuracies", "rewards/margins"} <= keys
    assert MetricSummary.objects.get(run=run, key__name="loss").n == 4


def _finished(export_id: int) -> Any:
    from evaluation.models import ExportJob

    job = ExportJob.objects.get(pk=export_id)
    assert job.status != ExportStatus.FAILED, job.error
    return job if job.status == ExportStatus.DONE else None


def swaps_by_prompt(study: Any, swaps: list[bool]) -> list[bool]:
    """The recorded swap of each item, in the order of its prompt."""
    from evaluation.models import Assignment

    rows = Assignment.objects.filter(study=study).select_related("item").order_by("id")
    by_prompt = {a.item.payload["prompt"]: a.swapped for a in rows}
    assert list(by_prompt.values()) == swaps
    return [by_prompt[p] for p in sorted(by_prompt)]
