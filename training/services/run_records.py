"""A researcher's housekeeping of runs: rename, tag, archive, delete (refused while anything depends on the run)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from arbiter import dependants
from arbiter.accounts.models import User
from arbiter.dependants import Dependant
from arbiter.labels import clean_name, clean_tags
from artifacts import uris
from training import selectors
from training.models import Run, RunTag

# Config fields that may name another run's checkpoint as a model: a run so configured trained on ours.
MODEL_PATH_FIELDS = ("model_name_or_path", "ref_model_name_or_path", "reward_model_path", "rubric_judge_path")


@transaction.atomic
def edit_run(*, run: Run, name: str, tags: Iterable[str]) -> Run:
    """Rename a run and replace its tags (the caller has checked the user may change it)."""
    run.name = clean_name(name)
    wanted = clean_tags(tags)
    run.save(update_fields=["name"])
    RunTag.objects.filter(run=run).exclude(name__in=wanted).delete()
    RunTag.objects.bulk_create([RunTag(run=run, name=n) for n in wanted], ignore_conflicts=True)
    return run


def set_run_archived(*, run: Run, archived: bool) -> Run:
    """Archive (hide from the run list, keep everything) or bring back. Active runs cannot be archived."""
    if archived and run.is_active:
        raise ValidationError(f"Run #{run.id} is {run.status}: cancel it or let it finish before archiving it.")
    run.archived_at = timezone.now() if archived else None
    run.save(update_fields=["archived_at"])
    return run


def _spellings(path: str) -> set[str]:
    """A checkpoint as a config may name it: as stored, as its canonical URI, and (file://) as a plain path."""
    out = {path}
    try:
        uri = uris.parse(path)
    except uris.BadUri:
        return out
    out.add(str(uri))
    if uri.scheme == "file":
        out.add(uri.key)
    return out


def runs_using_checkpoints(run: Run, user: Any) -> list[Dependant]:
    """Runs resumed from this run's checkpoints, or configured to train from one (as model, reference, judge)."""
    paths = sorted({spelling for p in run.checkpoints.values_list("path", flat=True) for spelling in _spellings(p)})
    using = Q(resume_checkpoint__run=run)
    for field in MODEL_PATH_FIELDS:
        if paths:
            using |= Q(**{f"config__{field}__in": paths})
    visible = set(selectors.visible_runs(user=user).values_list("id", flat=True)) if user else set()
    out = []
    for other in Run.objects.filter(using).exclude(id=run.id).distinct().order_by("id"):
        reason = "resumed from its checkpoint" if other.resume_checkpoint_id else "trains from its checkpoint"
        if other.id in visible:
            out.append(Dependant(f"run #{other.id} {other.name}", reason, other.get_absolute_url()))
        else:
            out.append(Dependant(f"run #{other.id} of another researcher", reason))
    return out


def delete_run(*, run: Run, by: User) -> None:
    """Delete a run and everything it logged, unless it is active or something depends on it (HasDependants).

    The checkpoint folders in the artifact store are not removed here: runs elsewhere may name them by path.
    """
    if run.is_active:
        raise ValidationError(f"Run #{run.id} is {run.status}: cancel it before deleting it.")
    dependants.delete_unless_needed(run, what=f"Run #{run.id}", user=by)


def dependants_of_run(*, run: Run, user: User) -> list[Dependant]:
    """Everything that stops `run` from being deleted, as `user` may be told of it."""
    return dependants.dependants_of(run, user=user)
