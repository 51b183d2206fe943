"""Run lifecycle: launch, claim, cancel, finish, the lost-run sweep, retry/resume, and user API keys."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from pydantic import ValidationError as PydanticValidationError

from arbiter.accounts.models import User
from artifacts.access import check_config_paths
from artifacts.models import ArtifactKind
from artifacts.services import register_artifact, run_uri

if TYPE_CHECKING:
    from training.engine.config import BaseRecipeConfig
from training import events
from training.models import (
    EXTERNAL_RECIPE,
    ApiToken,
    Checkpoint,
    Run,
    RunOrigin,
    RunStatus,
    RunTag,
    RunTransition,
    hash_token,
    new_token,
)
from training.services.datasets import check_run_datasets

logger = logging.getLogger(__name__)

# Which status may follow which. The database row moves only through `_transition`, whose
# UPDATE ... WHERE status IN (allowed) makes each move happen at most once under races.
ALLOWED_FROM: dict[str, frozenset[str]] = {
    RunStatus.RUNNING: frozenset({RunStatus.QUEUED}),
    RunStatus.SUCCEEDED: frozenset({RunStatus.RUNNING, RunStatus.LOST}),
    RunStatus.FAILED: frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.LOST}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.LOST}),
    RunStatus.LOST: frozenset({RunStatus.RUNNING}),
}


MAX_GPUS_PER_RUN = 64


def _check_some_worker_has(*, gpus: int, queue: str) -> None:
    """Refuse a run no known worker on its queue could ever start (it would wait, handed back, forever).

    Known = GPU workers that said hello through the worker API; with none known (the in-process worker of
    embedded mode, a worker not started yet) nothing is refused.
    """
    from workers.models import WorkerCredential

    sizes = [
        len(w.slots)
        for w in WorkerCredential.objects.filter(revoked_at__isnull=True).only("queues", "slots")
        if queue in (w.queues or [])
    ]
    if sizes and gpus > max(sizes):
        raise ValidationError(
            {"gpus": f"No worker on queue {queue!r} has {gpus} GPU slots (the most is {max(sizes)})."}
        )


def run_queues() -> list[str]:
    return list(getattr(settings, "ARBITER_RUN_QUEUES", ["gpu"]))


def recipe_config_cls(recipe: str) -> type[BaseRecipeConfig]:
    from training.engine.config import RECIPES  # no torch: the registry is import-cheap by contract

    info = RECIPES.get(recipe)
    if info is None:
        raise ValidationError({"recipe": f"Unknown recipe {recipe!r}."})
    return info.config_cls


def validate_config(*, recipe: str, config: dict[str, Any]) -> dict[str, Any]:
    """Validate with the recipe's pydantic model; each bad field becomes its own message."""
    cls = recipe_config_cls(recipe)
    try:
        return cls.model_validate(config).model_dump(mode="json")
    except PydanticValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "config"
            errors.setdefault(field, []).append(err["msg"])
        raise ValidationError(errors) from None


def bump_seq(*, run_id: int) -> int:
    """Next live-event sequence number; also row-locks the run until commit, serialising its writers."""
    with connection.cursor() as cur:
        cur.execute("UPDATE training_run SET event_seq = event_seq + 1 WHERE id = %s RETURNING event_seq", [run_id])
        row = cur.fetchone()
    if row is None:
        raise Run.DoesNotExist(run_id)
    return int(row[0])


def status_info(run: Run) -> events.StatusInfo:
    return {
        "status": run.status,
        "exit_code": run.exit_code,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _transition(
    *, run_id: int, to: str, note: str = "", allowed: frozenset[str] | None = None, **fields: Any
) -> Run | None:
    """Move a run to `to` if its current status allows it; record the transition; announce it after commit."""
    now = timezone.now()
    with transaction.atomic():
        allowed = ALLOWED_FROM[to] if allowed is None else allowed
        changed = Run.objects.filter(id=run_id, status__in=allowed).update(status=to, **fields)
        if not changed:
            return None
        RunTransition.objects.create(run_id=run_id, status=to, at=now, note=note[:300])
        seq = bump_seq(run_id=run_id)
        run = Run.objects.get(id=run_id)
        delta = events.empty_delta(run_id=run_id, seq=seq)
        delta["status"] = status_info(run)
        transaction.on_commit(lambda: events.broadcast(delta))
    return run


def _set_tags(run: Run, tags: Iterable[str]) -> None:
    names = sorted({t.strip()[:50] for t in tags if t.strip()})
    RunTag.objects.bulk_create([RunTag(run=run, name=n) for n in names], ignore_conflicts=True)


@transaction.atomic
def launch_run(
    *,
    owner: User,
    recipe: str,
    config: dict[str, Any],
    name: str = "",
    queue: str = "gpu",
    tags: Iterable[str] = (),
    shared: bool = False,
    parent: Run | None = None,
    origin: str = RunOrigin.LAUNCHED,
    resume_checkpoint: Checkpoint | None = None,
    gpus: int = 1,
) -> Run:
    """Create a queued run and enqueue its supervisor on `queue` once the row is committed."""
    if not owner.is_researcher:
        raise ValidationError("Only researchers launch runs.")
    if queue not in run_queues():
        raise ValidationError({"queue": f"Unknown queue {queue!r}."})
    if not 1 <= gpus <= MAX_GPUS_PER_RUN:
        raise ValidationError({"gpus": f"A run uses 1 to {MAX_GPUS_PER_RUN} GPUs."})
    _check_some_worker_has(gpus=gpus, queue=queue)
    clean = validate_config(recipe=recipe, config=config)
    # Every model and dataset the run would read must be one the launching user may read (issue 12.1).
    check_config_paths(user=owner, config=clean)
    check_run_datasets(recipe=recipe, config=clean)  # files, columns, usable rows: a field error, not a traceback
    run = Run.objects.create(
        owner=owner,
        name=name.strip() or f"{recipe}-{timezone.now():%m%d-%H%M%S}",
        recipe=recipe,
        config=clean,
        queue=queue,
        shared=shared,
        parent=parent,
        origin=origin,
        resume_checkpoint=resume_checkpoint,
        gpus=gpus,
        resume_from=resume_checkpoint.path if resume_checkpoint else "",
    )
    _set_tags(run, tags)
    RunTransition.objects.create(run=run, status=RunStatus.QUEUED, at=run.created_at)
    from training.tasks import supervise_run  # tasks import services: import here to avoid a cycle

    transaction.on_commit(lambda: supervise_run.apply_async((run.id,), queue=queue))
    return run


@transaction.atomic
def create_external_run(*, owner: User, name: str, config: dict[str, Any], tags: Iterable[str] = ()) -> tuple[Run, str]:
    """A run for a script started outside the platform: running at once; its token is returned once."""
    token = new_token("arb_r")
    now = timezone.now()
    run = Run.objects.create(
        owner=owner,
        name=name.strip() or f"external-{now:%m%d-%H%M%S}",
        recipe=EXTERNAL_RECIPE,
        config=config,
        queue="",
        status=RunStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        token_hash=hash_token(token),
    )
    _set_tags(run, tags)
    RunTransition.objects.create(run=run, status=RunStatus.RUNNING, at=now, note="created through the API")
    return run, token


def claim_run(*, run_id: int, worker: str, pid: int | None = None) -> tuple[Run, str] | None:
    """queued → running for exactly one caller; returns the run and its fresh token, else None."""
    token = new_token("arb_r")
    now = timezone.now()
    run = _transition(
        run_id=run_id,
        to=RunStatus.RUNNING,
        note=f"claimed by {worker}"[:300],
        started_at=now,
        heartbeat_at=now,
        worker=worker[:200],
        token_hash=hash_token(token),
    )
    if run is None:
        return None
    # The run's whole store location is one artifact of the run (checkpoints, final/): whoever may see
    # the run may train on what it wrote, nobody else.
    register_artifact(owner=run.owner, kind=ArtifactKind.CHECKPOINT, uri=str(run_uri(run_id=run.id)), run=run)
    return run, token


def record_process(*, run_id: int, pid: int, pgid: int) -> None:
    Run.objects.filter(id=run_id).update(pid=pid, pgid=pgid)


def heartbeat(*, run_id: int) -> bool:
    """Stamp the heartbeat; return True when a cancel was requested (the supervisor's poll)."""
    Run.objects.filter(id=run_id).update(heartbeat_at=timezone.now())
    return Run.objects.filter(id=run_id, cancel_requested_at__isnull=False).exists()


def finish_run(*, run_id: int, exit_code: int | None, cancelled: bool = False, note: str = "") -> Run | None:
    to = RunStatus.CANCELLED if cancelled else RunStatus.SUCCEEDED if exit_code == 0 else RunStatus.FAILED
    return _transition(run_id=run_id, to=to, note=note, exit_code=exit_code, finished_at=timezone.now())


def cancel_run(*, run: Run, by: User) -> Run:
    """Queued (or external) runs end now; a supervised running run is stopped by its supervisor's poll."""
    if not run.is_active:
        raise ValidationError(f"Run #{run.id} is already {run.status}.")
    Run.objects.filter(id=run.id, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())
    if run.status == RunStatus.QUEUED or run.is_external:
        _transition(
            run_id=run.id, to=RunStatus.CANCELLED, note=f"cancelled by {by.username}", finished_at=timezone.now()
        )
    run.refresh_from_db()
    return run


def set_status_from_client(*, run: Run, status: str, exit_code: int | None) -> Run:
    """An external script reports its own end; platform runs' status belongs to their supervisor."""
    if not run.is_external:
        raise ValidationError("The status of a platform-launched run is recorded by its supervisor.")
    if status == RunStatus.RUNNING:
        return run
    _transition(run_id=run.id, to=status, exit_code=exit_code, finished_at=timezone.now(), note="reported by client")
    run.refresh_from_db()
    return run


HEARTBEAT_STAMP_S = 5.0  # a script's reports stamp its heartbeat at most this often (one UPDATE)


def external_heartbeat(*, run: Run, explicit: bool = False) -> Run:
    """A script's sign of life (any report, or an explicit beat): stamp it.

    A run the sweep marked lost while its script was silent (a laptop asleep, a network outage)
    is running again when the script speaks: "lost" was the platform's guess, and the script's
    own report is better evidence (W&B does the same with runs it had marked crashed).
    """
    now = timezone.now()
    if run.status == RunStatus.LOST:
        revived = _transition(
            run_id=run.id,
            to=RunStatus.RUNNING,
            allowed=frozenset({RunStatus.LOST}),
            note="the script reported again",
            heartbeat_at=now,
            finished_at=None,
        )
        return revived or run
    stale = run.heartbeat_at is None or (now - run.heartbeat_at).total_seconds() >= HEARTBEAT_STAMP_S
    if run.status == RunStatus.RUNNING and (explicit or stale):
        Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(heartbeat_at=now)
        run.heartbeat_at = now
    return run


def mark_lost_runs(*, timeout_s: int | None = None) -> list[int]:
    """Running runs whose heartbeat stopped become lost.

    Supervised runs: their worker was killed or the machine is gone. Runs created by scripts
    (`arbiter_client.init`): the script stopped reporting without saying how it ended.
    """
    timeout_s = timeout_s if timeout_s is not None else settings.RUN_HEARTBEAT_TIMEOUT
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    stale = list(Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).values_list("id", flat=True))
    lost = []
    for run_id in stale:
        if _transition(
            run_id=run_id, to=RunStatus.LOST, note=f"no heartbeat for {timeout_s}s", finished_at=timezone.now()
        ):
            lost.append(run_id)
    if lost:
        logger.warning("marked runs lost: %s", lost)
    return lost


# Suffixes this module adds to names; a retry or resume of a retry or resume names the lineage, not the chain.
_LINEAGE_SUFFIX = re.compile(r"\s+\((?:retry(?: \d+)?|resumed(?: @\d+)?)\)\s*$")
MAX_LINEAGE_DEPTH = 1000  # parent links cannot form a cycle through the services; this bounds a hand-edited one


def lineage_base_name(name: str) -> str:
    """ "exp (resumed @10) (retry 2)" -> "exp": the name a retry or resume is named after."""
    while (stripped := _LINEAGE_SUFFIX.sub("", name)) != name:
        name = stripped
    return name or "run"


def lineage_root(run: Run) -> Run:
    """The first run of the family: follow parents (retries and resumes alike) to the top."""
    seen = {run.id}
    while run.parent_id is not None and run.parent_id not in seen and len(seen) < MAX_LINEAGE_DEPTH:
        seen.add(run.parent_id)
        parent = Run.objects.filter(id=run.parent_id).first()
        if parent is None:
            break
        run = parent
    return run


def lineage_run_ids(root: Run) -> set[int]:
    """The root and every run descended from it, one query per generation."""
    ids, frontier = {root.id}, {root.id}
    while frontier and len(ids) < 100_000:
        frontier = set(Run.objects.filter(parent_id__in=frontier).values_list("id", flat=True)) - ids
        ids |= frontier
    return ids


def resume_point(run: Run) -> Checkpoint | None:
    """The checkpoint a resume of `run` continues from: its newest, else that of the run it resumed, and so on.

    Only resume links are followed: a retry started from step 1, so its parent's checkpoints are not part of
    its training and resuming it from them would silently continue a different run.
    """
    seen: set[int] = set()
    current: Run | None = run
    while current is not None and current.id not in seen and len(seen) < MAX_LINEAGE_DEPTH:
        seen.add(current.id)
        checkpoint = current.checkpoints.order_by("-step").first()
        if checkpoint is not None:
            return checkpoint
        if current.origin != RunOrigin.RESUME or current.parent_id is None:
            return None
        current = Run.objects.filter(id=current.parent_id).first()
    return None


def retry_run(*, run: Run, by: User) -> Run:
    """The same recipe and config again, from step 1 (never from a checkpoint), named "<name> (retry N)".

    N counts the retries in the run's whole family, so retrying a resumed run, or a retry, reads as the
    next attempt at the same experiment rather than as a resume.
    """
    if run.is_external:
        raise ValidationError("External runs are started by their own script.")
    root = lineage_root(run)
    number = Run.objects.filter(id__in=lineage_run_ids(root), origin=RunOrigin.RETRY).count() + 1
    return launch_run(
        owner=by,
        recipe=run.recipe,
        config=run.config,
        name=f"{lineage_base_name(run.name)} (retry {number})",
        queue=run.queue,
        gpus=run.gpus,
        tags=run.tags.values_list("name", flat=True),
        parent=run,
        origin=RunOrigin.RETRY,
    )


def resume_run(*, run: Run, by: User) -> Run:
    """A new run that continues from the newest checkpoint of this run or of the runs it resumed."""
    if run.is_external:
        raise ValidationError("External runs are started by their own script.")
    if run.is_active:
        raise ValidationError("Cancel the run before resuming it.")
    checkpoint = resume_point(run)
    if checkpoint is None:
        raise ValidationError(f"Run #{run.id} has no checkpoint to resume from, and did not resume one that has.")
    return launch_run(
        owner=by,
        recipe=run.recipe,
        config=run.config,
        name=f"{lineage_base_name(run.name)} (resumed @{checkpoint.step})",
        queue=run.queue,
        gpus=run.gpus,
        tags=run.tags.values_list("name", flat=True),
        parent=run,
        origin=RunOrigin.RESUME,
        resume_checkpoint=checkpoint,
    )


def issue_api_token(*, user: User, name: str) -> tuple[ApiToken, str]:
    """A new API key; the plain key is returned once and only its hash is kept."""
    if not user.is_researcher:
        raise ValidationError("Only researchers may create API keys.")
    plain = new_token("arb_u")
    token = ApiToken.objects.create(
        user=user, name=name[:100] or "key", token_hash=hash_token(plain), prefix=plain[:10]
    )
    return token, plain


def revoke_api_token(*, token: ApiToken) -> None:
    ApiToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=timezone.now())
