"""A researcher's housekeeping of runs: rename, tag, archive, delete (refused while anything depends on the run)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from arbiter import dependants
from arbiter.accounts.models import User
from arbiter.dependants import Dependant
from arbiter.labels import clean_name, clean_tags
from artifacts import uris
from artifacts.access import store_base
from artifacts.localize import MODEL_FIELDS
from artifacts.models import Artifact
from artifacts.services import canonical_uri, remove, run_uri
from training import selectors
from training.models import EXTERNAL_RECIPE, Checkpoint, Run, RunTag

logger = logging.getLogger(__name__)

# Config fields that may name another run's checkpoint as a model: a run so configured trained on ours. The
# launch check's own list (artifacts.localize), so a model field added there is a dependency here too.
MODEL_PATH_FIELDS = MODEL_FIELDS


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


def _as_written(value: str) -> uris.Uri | None:
    try:
        return uris.parse(value.strip())
    except uris.BadUri:
        return None


def _canonical(value: str) -> uris.Uri | None:
    try:
        return canonical_uri(value.strip())
    except uris.BadUri:
        return None


def runs_using_checkpoints(run: Run, user: Any) -> list[Dependant]:
    """Runs resumed from this run's checkpoints, or configured to train from one (as model, reference, judge).

    A config names a checkpoint in any spelling the launch check accepts (a path, `file://`, a trailing `/`,
    `.` segments, the run's whole location or a folder in it): both sides are compared as canonical URIs,
    the same resolution the launch check used to let the run read it.
    """
    places = [p for p in (_canonical(path) for path in run.checkpoints.values_list("path", flat=True)) if p]
    places.append(run_uri(run_id=run.id))
    names_a_path = Q()
    for field in MODEL_PATH_FIELDS:
        for prefix in ("/", "file://", "s3://"):
            names_a_path |= Q(**{f"config__{field}__startswith": prefix})
    using_ids = set(Run.objects.filter(resume_checkpoint__run=run).values_list("id", flat=True))
    # Runs a script created (POST /api/runs/) keep their config as notes, never checked or read on the server.
    launched = Run.objects.filter(names_a_path).exclude(id=run.id).exclude(recipe=EXTERNAL_RECIPE)
    for other_id, config in launched.values_list("id", "config"):
        values = [config.get(f) for f in MODEL_PATH_FIELDS] if isinstance(config, dict) else []
        uris_used = [_canonical(v) for v in values if isinstance(v, str) and v]
        if any(u is not None and any(p.contains(u) for p in places) for u in uris_used):
            using_ids.add(other_id)
    visible = set(selectors.visible_runs(user=user).values_list("id", flat=True)) if user else set()
    out = []
    for other in Run.objects.filter(id__in=using_ids).exclude(id=run.id).order_by("id"):
        reason = "resumed from its checkpoint" if other.resume_checkpoint_id else "trains from its checkpoint"
        if other.id in visible:
            out.append(Dependant(f"run #{other.id} {other.name}", reason, other.get_absolute_url()))
        else:
            out.append(Dependant(f"run #{other.id} of another researcher", reason))
    return out


def run_files(run: Run) -> list[uris.Uri]:
    """What of the artifact store is this run's own: its location (`<store>/runs/<id>`: checkpoints, final/) and
    any checkpoint or artifact of the run stored elsewhere in the store (rows older than the location rule).

    A place that holds something another object is recorded at (another run's checkpoint or artifact, an export)
    is left out: deleting it would take their files too.
    """
    base = store_base()
    wanted = [run_uri(run_id=run.id)]
    for value in [*run.checkpoints.values_list("path", flat=True), *run.artifacts.values_list("uri", flat=True)]:
        # As recorded (rows were canonical when reported), not re-resolved now: a folder since replaced by a
        # symlink must not lead the delete to the link's target.
        uri = _as_written(value)
        if uri is not None and base.contains(uri) and str(uri) != str(base):
            wanted.append(uri)
    places = [u for u in wanted if not any(w.contains(u) and str(w) != str(u) for w in wanted)]  # outermost
    places = list({str(u): u for u in places}.values())
    kept = []
    for place in places:
        if _holds_others(place, run):
            logger.warning("Run #%s: %s is kept (another run or an export has files inside it)", run.id, place)
            continue
        kept.append(place)
    return kept


def _holds_others(place: uris.Uri, run: Run | int) -> bool:
    """Whether another object's checkpoint or artifact row names a place inside `place` (prefix queries on the
    spellings a row may use: the canonical URI, and a local path for the embedded store). `run`: the run whose
    own rows do not count (its id once it is deleted: then every row counts)."""
    spellings = [str(place)] + ([place.key] if place.scheme == "file" else [])
    prefix = Q()
    for spelling in spellings:
        prefix |= Q(value=spelling) | Q(value__startswith=spelling.rstrip("/") + "/")
    rows = [
        *Artifact.objects.exclude(run=run).annotate(value=F("uri")).filter(prefix).values_list("value", flat=True),
        *Checkpoint.objects.exclude(run=run).annotate(value=F("path")).filter(prefix).values_list("value", flat=True),
    ]
    return any(u is not None and place.contains(u) for u in map(_canonical, rows))


def _queue_removal(run_id: int, places: list[uris.Uri]) -> None:
    """After the delete's commit: hand the files to a worker (training.remove_run_files), so that a run of many
    GB in a bucket never holds the web request open and a removal cut short (a worker killed, the store down a
    moment) is retried. If the broker cannot take the task, remove them here instead: never left unsaid."""
    from training.tasks import remove_run_files

    names = [str(p) for p in places]
    if not names:
        return
    try:
        remove_run_files.delay(run_id, names)
    except Exception:  # kombu's OperationalError and the socket errors under it: remove in this process instead
        logger.warning("Run #%s: the broker did not take the file removal; removing its files here", run_id)
        remove_run_files_now(run_id=run_id, places=names)


def remove_run_files_now(*, run_id: int, places: list[str]) -> list[str]:
    """Remove a deleted run's places from the artifact store; the places that failed (logged), for a retry.

    Each place is checked again first: a row written since the delete (another run's checkpoint, an export)
    that lies inside it keeps it, as at the delete. A place already gone is done."""
    failed = []
    for value in places:
        place = _as_written(value)
        if place is None:
            continue
        try:
            if _holds_others(place, run_id):
                logger.warning("Run #%s: %s is kept (another run or an export has files inside it now)", run_id, place)
                continue
            remove(str(place))
        except Exception:  # the database or the store failing: reported, retried by the task, the next place tried
            logger.exception("Run #%s was deleted but its files at %s could not be removed", run_id, place)
            failed.append(value)
    return failed


def delete_run(*, run: Run, by: User) -> None:
    """Delete a run and everything it logged, unless it is active or something depends on it (HasDependants);
    once the delete has committed, a worker removes the run's own files from the artifact store (local or S3).

    Runs resumed from or configured to train from its checkpoints, and studies sampled from them, are dependants:
    while one exists nothing is deleted, rows or files. Files go only after the commit, so a delete that rolls
    back never leaves a run whose checkpoints are missing.
    """
    if run.is_active:
        raise ValidationError(f"Run #{run.id} is {run.status}: cancel it before deleting it.")
    run_id = run.id
    with transaction.atomic():
        places = run_files(run)
        dependants.delete_unless_needed(run, what=f"Run #{run_id}", user=by)
        transaction.on_commit(lambda: _queue_removal(run_id, places))


def dependants_of_run(*, run: Run, user: User) -> list[Dependant]:
    """Everything that stops `run` from being deleted, as `user` may be told of it."""
    return dependants.dependants_of(run, user=user)
