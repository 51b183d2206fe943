"""Fixtures of the loop tests: studies with judgments, finished exports, runs with checkpoints and policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from arbiter.accounts.models import User
from evaluation import export, services
from evaluation.models import ExportJob, Study
from tests.evaluation.conftest import make_annotators, make_study  # noqa: F401 - fixtures used by these tests
from tests.training.conftest import FAST_DEMO, external_run, live_stack, make_run  # noqa: F401
from training.models import Checkpoint, Run, RunStatus


def judge(study: Study, person: User, choices: list[str]) -> None:
    """Submit pairwise verdicts in the item's own order ("a", "b" or "tie"), whatever side was shown."""
    for choice in choices:
        a = services.next_assignment(annotator=person, study=study)
        assert a is not None, "no item left to judge"
        shown = "tie" if choice == "tie" else ("left" if (choice == "a") != a.swapped else "right")
        services.submit_judgment(annotator=person, assignment_id=a.pk, data={"choice": shown})


def finished_export(study: Study, owner: User) -> ExportJob:
    """A reward-data export written now, in this process (no worker)."""
    job = ExportJob.objects.create(study=study, requested_by=owner, format="reward")
    done = export.run_export(export_id=job.pk)
    assert done is not None
    return done


@pytest.fixture
def run_with_checkpoints(tmp_path: Any) -> Callable[..., Run]:
    def make(owner: User, steps: tuple[int, ...] = (10, 20), **fields: Any) -> Run:
        fields.setdefault("name", "grpo-demo")
        fields.setdefault("recipe", "demo_grpo")
        fields.setdefault("status", RunStatus.SUCCEEDED)
        run = Run.objects.create(owner=owner, **fields)
        for step in steps:
            Checkpoint.objects.create(run=run, step=step, path=str(tmp_path / f"run{run.pk}" / f"checkpoint-{step}"))
        return run

    return make


def sourced_pairwise_study(
    owner: User, pairs: list[tuple[Any, Any]], *, annotators: list[User] | None = None, name: str = "sourced"
) -> Study:
    """A pairwise study whose item i compares pairs[i] = (policy A, policy B), with the provenance recorded."""
    import orjson

    from evaluation.importers import parse_jsonl
    from evaluation.models import Item
    from loop.models import ItemSource

    study = services.create_study(owner=owner, name=name, kind="pairwise", overlap=1, annotators=annotators or [])
    rows = [
        {"id": f"x{i}", "prompt": f"q{i}", "response_a": f"answer a{i}", "response_b": f"answer b{i}",
         "model_a": a.label, "model_b": b.label}
        for i, (a, b) in enumerate(pairs)
    ]  # fmt: skip
    services.add_items(study=study, items=parse_jsonl(b"\n".join(orjson.dumps(r) for r in rows), kind="pairwise").items)
    ids = dict(Item.objects.filter(study=study).values_list("external_id", "pk"))
    ItemSource.objects.bulk_create(
        [
            ItemSource(item_id=ids[f"x{i}"], side=side, policy=p)
            for i, pair in enumerate(pairs)
            for side, p in zip("ab", pair, strict=True)
        ]
    )
    return study
