"""Send rows of a run's samples table to a study: each row's completion becomes an item side written by the run's
policy at that step (a rating item per row, or a pairwise item per two rows that share a prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from arbiter.accounts.models import User
from evaluation import services as study_services
from evaluation.models import Item, Study, StudyKind
from evaluation.selectors import can_edit_study
from loop.services.items import Added, Sources, add_sourced_items
from loop.services.policies import policy_for_run_step
from training.models import Run, RunTable

SENDABLE_KINDS = (StudyKind.RATING, StudyKind.PAIRWISE)


@dataclass(frozen=True)
class Sent:
    study: Study
    added: Added


def _cells(table: RunTable, index: int) -> tuple[str, str]:
    row = table.rows[index]
    prompt, completion = row[table.columns.index("prompt")], row[table.columns.index("completion")]
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        raise ValidationError({"rows": f"row {index + 1} has no prompt or an empty completion"})
    return prompt, completion


def table_rows_to_items(
    *, table: RunTable, indexes: Sequence[int], kind: str, label: str, policy_id: int
) -> tuple[list[dict[str, Any]], Sources]:
    """Importer rows and their sources for the chosen rows of a table (pure but for the table it reads)."""
    if not {"prompt", "completion"} <= set(table.columns):
        raise ValidationError({"rows": "this table has no prompt and completion columns to send"})
    picked = sorted(set(indexes))
    if not picked:
        raise ValidationError({"rows": "tick at least one row"})
    if picked[0] < 0 or picked[-1] >= len(table.rows):
        raise ValidationError({"rows": "a row that is not in the table"})
    tag = f"table-{table.pk}"
    rows: list[dict[str, Any]] = []
    sources: Sources = {}
    if kind == StudyKind.RATING:
        for i in picked:
            prompt, completion = _cells(table, i)
            rid = f"{tag}-{i}"
            rows.append({"id": rid, "prompt": prompt, "response": completion, "model": label})
            sources[rid] = [("response", policy_id, i)]
        return rows, sources
    by_prompt: dict[str, list[tuple[int, str]]] = {}
    for i in picked:
        prompt, completion = _cells(table, i)
        by_prompt.setdefault(prompt, []).append((i, completion))
    for prompt, group in by_prompt.items():
        if len(group) % 2:
            raise ValidationError(
                {"rows": f"row {group[-1][0] + 1} has no partner: a pairwise item needs two rows with the same prompt"}
            )
        for (i, a), (j, b) in zip(group[::2], group[1::2], strict=True):
            if a == b:
                raise ValidationError({"rows": f"rows {i + 1} and {j + 1} have the same completion: nothing to judge"})
            rid = f"{tag}-{i}-{j}"
            # Both sides come from one policy; the study names them apart by row (its importer wants two systems).
            rows.append(
                {
                    "id": rid,
                    "prompt": prompt,
                    "response_a": a,
                    "response_b": b,
                    "model_a": f"{label} · row {i + 1}",
                    "model_b": f"{label} · row {j + 1}",
                }
            )
            sources[rid] = [("a", policy_id, i), ("b", policy_id, j)]
    return rows, sources


def send_table_rows(
    *,
    user: User,
    run: Run,
    table: RunTable,
    indexes: Sequence[int],
    study: Study | None = None,
    new_kind: str = "",
    new_name: str = "",
    annotators: Sequence[User] = (),
) -> Sent:
    """Add the chosen rows to `study` (one the user may edit) or to a new study of `new_kind`."""
    if not user.is_researcher:
        raise ValidationError("Only researchers make studies.")
    if study is not None:
        if not can_edit_study(user=user, study=study):
            raise ValidationError({"study": "Only the study's owner adds items to it."})
        kind = study.kind
    else:
        kind = new_kind
    if kind not in SENDABLE_KINDS:
        raise ValidationError({"study": "Rows go to a rating or a pairwise study."})
    if any(not a.is_annotator for a in annotators):
        raise ValidationError({"annotators": "Only annotators can be assigned to a study."})
    policy = policy_for_run_step(run=run, step=table.step)
    rows, sources = table_rows_to_items(
        table=table, indexes=indexes, kind=kind, label=policy.label, policy_id=policy.pk
    )
    with study_services.write_transaction():
        if study is None:
            study = study_services.create_study(
                owner=user,
                name=(new_name.strip() or f"Samples of {policy.label}")[:200],
                kind=kind,
                annotators=list(annotators),
            )
        else:
            already = Item.objects.filter(study=study, external_id__in=[r["id"] for r in rows])
            if taken := sorted(already.values_list("external_id", flat=True)):
                raise ValidationError({"rows": f"already in this study: {', '.join(taken)}"})
        added = add_sourced_items(study=study, rows=rows, sources=sources)
    return Sent(study, added)
