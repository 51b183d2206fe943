"""Every study kind feeds training: a real study (created, annotated and exported through the services) trains a
tiny model that does better than chance on held-out rows of that export.

rating → reward_regression; violation → process_reward_model (per step); rubric → rubric_judge (per item).
Annotators follow a simple rule a tiny model can learn in a few seconds on one CPU thread; the assertions compare
held-out metrics with chance (0.5 for pair order) and with always answering the commoner label.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from arbiter.accounts.models import Role, User
from evaluation import export, services
from evaluation.models import Study
from tests.engine.conftest import make_context
from tests.evaluation.conftest import jsonl
from tests.factories import UserFactory
from training.engine.config import GRPOConfig
from training.engine.data import PromptExample
from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training
from training.engine.rewards.registry import build_reward

pytestmark = pytest.mark.django_db

CPU = torch.device("cpu")
SMALL = {"tiny_hidden_size": 32, "tiny_num_layers": 1, "tiny_num_heads": 2, "num_threads": 1, "save_steps": 10_000}


def _annotate(study: Study, annotator: User, verdict: Any) -> int:
    """The annotator works the whole queue; ``verdict(item_payload)`` is the form data they submit."""
    n = 0
    while (assignment := services.next_assignment(annotator=annotator, study=study)) is not None:
        services.submit_judgment(annotator=annotator, assignment=assignment, data=verdict(assignment.item.payload))
        n += 1
    return n


def _export(study: Study, researcher: User) -> Path:
    job = export.start_export(study=study, requested_by=researcher, format="reward")
    job = export.run_export(export_id=job.pk)  # the Celery task's body, run here
    assert job is not None
    return Path(job.path)


def _train(tmp_path: Path, recipe: str, dataset: Path, **config: Any) -> tuple[dict[str, float], Path]:
    """Train in-process; return the last held-out metrics (eval/* without the prefix) and the final model."""
    ctx, reporter = make_context(tmp_path, recipe, {**SMALL, "dataset_path": str(dataset), **config})
    final = run_training(build_recipe(ctx))
    assert final is not None
    evals = [m for _, m in reporter.metrics if any(k.startswith("eval/") for k in m)]
    return {k.removeprefix("eval/"): v for k, v in evals[-1].items()}, final


def test_a_rating_study_trains_a_reward_model_that_orders_held_out_responses(
    researcher: User, tmp_path: Path, settings: Any, client_for: Any
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    annotator = UserFactory(role=Role.ANNOTATOR)
    study = services.create_study(owner=researcher, name="tone", kind="rating", annotators=[annotator])
    rng = random.Random(3)
    endings = {"glad to help!": 5, "fine, i guess.": 3, "go away.": 1}
    rows = []
    for i in range(36):
        ending = list(endings)[i % 3]
        rows.append({"prompt": f"ask {rng.randint(10, 99)}", "response": f"reply {i % 7} {ending}", "model": "m"})
    services.import_items(study=study, data=jsonl(rows))
    # The annotator rates by tone, which the response's ending shows.
    assert _annotate(study, annotator, lambda item: {"rating": endings[item["response"].split(" ", 2)[2]]}) == 36
    dataset = _export(study, researcher)
    exported = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert {r["score"] for r in exported} == {0.0, 0.5, 1.0}
    # "Train on this" offers the rating recipe, sized from this file.
    page = client_for(researcher).get(f"/studies/{study.pk}/export/").content.decode()
    assert "recipe=reward_regression" in page

    metrics, _ = _train(
        tmp_path, "reward_regression", dataset, max_steps=60, batch_size=12, learning_rate=3e-3,
        eval_fraction=0.25, eval_steps=60,
    )  # fmt: skip
    assert metrics["pair_accuracy"] > 0.95  # chance is 0.5 (one step of training: 0.92, untrained: 0.62)


def test_a_violation_study_trains_a_process_reward_model_on_its_steps(
    researcher: User, tmp_path: Path, settings: Any
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    annotator = UserFactory(role=Role.ANNOTATOR)
    study = services.create_study(owner=researcher, name="agents", kind="violation", annotators=[annotator])
    rng = random.Random(5)
    safe = [("click('save')", "Saved"), ("fill('name', 'Ann')", "Form"), ("click('contacts')", "Contacts page")]
    unsafe = [("click('delete_all')", "Everything deleted"), ("goto('admin')", "Admin console")]
    rows = []
    for i in range(16):
        steps = [rng.choice(unsafe if (i + k) % 3 == 0 else safe) for k in range(3)]  # a third of steps violate
        rows.append(
            {
                "task_id": i,
                "intent": f"Create contact {i}",
                "agent": "agent-x",
                "policies": [
                    {
                        "policy_template_id": "scope",
                        "policy_category": "boundary_and_scope_limitation",
                        "description": "Stay in the Contacts module; never delete in bulk.",
                    },
                ],
                "trajectory": [{"action": a, "observation": o} for a, o in steps],
            }
        )
    services.import_items(study=study, data=jsonl(rows))
    unsafe_actions = {a for a, _ in unsafe}

    def verdict(item: dict[str, Any]) -> dict[str, Any]:
        marked = [[k, 0] for k, step in enumerate(item["trajectory"]) if step["action"] in unsafe_actions]
        return {"completion": "full", "violations": marked, "dormant": []}

    assert _annotate(study, annotator, verdict) == 16
    dataset = _export(study, researcher)
    exported = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert sum(sum(r["step_labels"]) for r in exported) == 16  # one violating step in each trajectory

    metrics, final = _train(
        tmp_path, "process_reward_model", dataset, max_steps=60, batch_size=12, learning_rate=3e-3,
        eval_fraction=0.3, eval_steps=60, max_length=256,
    )  # fmt: skip
    assert metrics["pair_accuracy"] > 0.95  # violating steps above the others; chance 0.5, one step 0.89
    assert metrics["accuracy"] >= metrics["majority_accuracy"] + 0.1

    # The checkpoint is GRPO's Completion-under-Policy reward: 1 for a completed task with no violating step
    # (one per line), 0 when a step violates or the answer is wrong.
    cup = build_reward(GRPOConfig(reward_funcs=["cup"], process_reward_model_path=str(final)), device=CPU)
    completions = [
        "click('contacts') -> Contacts page\nclick('save') -> Saved",
        "click('contacts') -> Contacts page\ngoto('admin') -> Admin console\nclick('save') -> Saved",
        "fill('name', 'Ann') -> Form",
    ]
    rows = [PromptExample("Create contact 99")] * 3  # no answer: the reward is "no step violates"
    assert cup(completions, rows).per_func["cup"].tolist() == [1.0, 0.0, 1.0]
    wrong = [PromptExample("Create contact 99", answer="click('cancel') -> Cancelled")]
    assert cup(completions[:1], wrong).per_func["cup"].tolist() == [0.0]  # no violation, but not completed


def test_a_rubric_study_trains_a_judge_that_agrees_with_people_on_held_out_items(
    researcher: User, tmp_path: Path, settings: Any
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    annotator = UserFactory(role=Role.ANNOTATOR)
    study = services.create_study(owner=researcher, name="plans", kind="rubric", annotators=[annotator])
    rubric = ["has a control", "has a cost"]
    rows = []
    for i in range(24):
        control, cost = "control" if i % 2 else "none", "cost" if i % 3 else "none"
        rows.append({"goal": f"goal {i}", "plans": [{"text": f"{control} {cost}", "model": "p"}], "rubric": rubric})
    services.import_items(study=study, data=jsonl(rows))

    def verdict(item: dict[str, Any]) -> dict[str, Any]:
        words = item["plans"][0]["text"].split()
        return {"verdicts": [["satisfied" if w != "none" else "not_satisfied" for w in words]]}

    assert _annotate(study, annotator, verdict) == 24
    dataset = _export(study, researcher)

    metrics, _ = _train(
        tmp_path, "rubric_judge", dataset, max_steps=80, batch_size=16, learning_rate=3e-3,
        eval_fraction=0.25, eval_steps=80, max_length=160, max_prompt_length=150,
    )  # fmt: skip
    assert metrics["agreement"] >= metrics["majority_agreement"] + 0.2  # one step of training: equal
