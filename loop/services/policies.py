"""Policy rows: one per run step (a checkpoint, or samples logged while training) and one per outside model path."""

from __future__ import annotations

from loop.models import Policy, PolicyKind
from training.models import Checkpoint, Run


def run_step_label(run: Run, step: int) -> str:
    """How results and the leaderboard name a run's step: "#12 grpo-demo @ step 50"."""
    return f"#{run.pk} {run.name} @ step {step}"[:300]


def policy_for_checkpoint(*, checkpoint: Checkpoint) -> Policy:
    """The policy of a checkpoint (the same row as the run's samples at that step, if those came first)."""
    run = checkpoint.run
    policy, created = Policy.objects.get_or_create(
        run=run,
        step=checkpoint.step,
        defaults={
            "kind": PolicyKind.RUN,
            "checkpoint": checkpoint,
            "model_path": checkpoint.path,
            "label": run_step_label(run, checkpoint.step),
        },
    )
    if not created and policy.checkpoint_id is None:
        policy.checkpoint, policy.model_path = checkpoint, checkpoint.path
        policy.save(update_fields=["checkpoint", "model_path"])
    return policy


def policy_for_run_step(*, run: Run, step: int) -> Policy:
    """The policy of a run at a step (samples logged while training); tied to its checkpoint when one exists."""
    checkpoint = Checkpoint.objects.filter(run=run, step=step).first()
    if checkpoint is not None:
        return policy_for_checkpoint(checkpoint=checkpoint)
    policy, _ = Policy.objects.get_or_create(
        run=run, step=step, defaults={"kind": PolicyKind.RUN, "label": run_step_label(run, step)}
    )
    return policy


def policy_for_model(*, path: str) -> Policy:
    """The policy of a model named by path or hub id, outside any run."""
    policy, _ = Policy.objects.get_or_create(kind=PolicyKind.MODEL, model_path=path, defaults={"label": path[:300]})
    return policy
