"""Writes for human studies: create and edit studies, import items, lease items, record judgments.

The assignment rules live here and nowhere else:
- an item is held by at most `overlap` live assignments (completed or leased): `Item.claimed`,
  guarded by a CheckConstraint, changes only in the same transaction as the assignment rows;
- an annotator holds at most one open assignment per study, and never gets the same item twice
  (both UniqueConstraints);
- the claim locks one candidate item with `FOR UPDATE SKIP LOCKED`, so concurrent annotators
  take different items instead of queueing on one row;
- an expired lease is released (its slot returns to the queue) by `release_expired_leases`,
  which runs throttled from the queue itself and from a periodic task.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from arbiter.accounts.models import User
from evaluation import events
from evaluation.importers import ParsedItem, RowError, parse_jsonl
from evaluation.judgments import canonical_judgment
from evaluation.models import Assignment, Item, Judgment, RubricItemFlag, Study, StudyKind

RELEASE_EVERY_S = 5.0  # how often one process sweeps a study's expired leases from the queue path
_last_release: dict[int, float] = {}


class LeaseExpired(Exception):
    """The assignment's lease ran out and its item went back to the queue."""


class AssignmentClosed(Exception):
    """The assignment was skipped: there is nothing left to submit to it."""


class ImportRejected(Exception):
    def __init__(self, errors: list[RowError], error_count: int, valid_count: int) -> None:
        super().__init__(f"{error_count} invalid rows")
        self.errors = errors
        self.error_count = error_count
        self.valid_count = valid_count


@dataclass(frozen=True)
class ImportReport:
    created: int
    skipped_rows: list[RowError]
    skipped_count: int


# --------------------------------------------------------------------------- studies


@transaction.atomic
def create_study(
    *,
    owner: User,
    name: str,
    kind: str,
    instructions: str = "",
    overlap: int = 1,
    lease_seconds: int = 900,
    accuracy_threshold: float = 0.7,
    scale_labels: list[str] | None = None,
    annotators: list[User] | None = None,
    shared_with: list[User] | None = None,
) -> Study:
    if kind not in StudyKind.values:
        raise ValidationError({"kind": "Unknown study kind."})
    study = Study.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        instructions=instructions,
        overlap=overlap,
        lease_seconds=lease_seconds,
        accuracy_threshold=accuracy_threshold,
        scale_labels=scale_labels or [],
    )
    if annotators:
        study.annotators.set(annotators)
    if shared_with:
        study.shared_with.set(shared_with)
    return study


@transaction.atomic
def update_study(
    *,
    study: Study,
    name: str,
    instructions: str,
    overlap: int,
    lease_seconds: int,
    accuracy_threshold: float,
    scale_labels: list[str],
    annotators: list[User],
    shared_with: list[User],
) -> Study:
    """Edit a study. Overlap may not drop below what an item already holds: those judgments exist."""
    locked = Study.objects.select_for_update().get(pk=study.pk)
    if overlap != locked.overlap:
        held = Item.objects.filter(study=locked).aggregate(m=Max("claimed"))["m"] or 0
        if overlap < held:
            raise ValidationError({"overlap": f"Some items already have {held} judgments or leases; overlap >= {held}."})
        Item.objects.filter(study=locked).update(overlap=overlap)
    locked.name, locked.instructions, locked.overlap = name, instructions, overlap
    locked.lease_seconds, locked.accuracy_threshold, locked.scale_labels = lease_seconds, accuracy_threshold, scale_labels
    locked.save()
    locked.annotators.set(annotators)
    locked.shared_with.set(shared_with)
    return locked


# --------------------------------------------------------------------------- items


def import_items(*, study: Study, data: bytes, import_valid_rows: bool = False) -> ImportReport:
    """Store a JSONL upload. Any bad row refuses the whole file, unless the researcher asked for the valid rows."""
    result = parse_jsonl(data, kind=study.kind)
    if result.error_count and (not import_valid_rows or not result.items):
        raise ImportRejected(result.errors, result.error_count, len(result.items))
    created = add_items(study=study, items=result.items)
    return ImportReport(created, result.errors, result.error_count)


@transaction.atomic
def add_items(*, study: Study, items: list[ParsedItem]) -> int:
    # Lock the study so two uploads at once do not interleave positions.
    locked = Study.objects.select_for_update().get(pk=study.pk)
    start = (Item.objects.filter(study=locked).aggregate(m=Max("position"))["m"] or 0) + 1
    rows = [
        Item(
            study=locked,
            position=start + i,
            external_id=p.external_id[:200],
            payload=p.payload,
            is_gold=p.is_gold,
            expected=p.expected,
            overlap=locked.overlap,
        )
        for i, p in enumerate(items)
    ]
    Item.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


# --------------------------------------------------------------------------- the queue


def next_assignment(*, annotator: User, study: Study) -> Assignment | None:
    """The annotator's open assignment in this study, or a newly leased item; None when nothing is left."""
    _maybe_release(study.pk)
    for attempt in range(3):
        try:
            assignment = _claim(annotator=annotator, study=study)
        except OperationalError:
            # A deadlock with a concurrent sweep is possible in principle; PostgreSQL picks a victim.
            if attempt == 2:
                raise
            continue
        if assignment is None and release_expired_leases(study_id=study.pk):
            continue  # abandoned leases just went back: try again
        return assignment
    return None


@transaction.atomic
def _claim(*, annotator: User, study: Study) -> Assignment | None:
    now = timezone.now()
    if connection.vendor == "postgresql":
        # Serialise one annotator's own requests (two tabs, a retry) so they share one open assignment.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [study.pk, annotator.pk])
    lease = timedelta(seconds=study.lease_seconds)
    open_assignment = (
        Assignment.objects.filter(study=study, annotator=annotator, completed_at=None, released_at=None)
        .select_related("item")
        .first()
    )
    if open_assignment is not None:
        if open_assignment.lease_expires_at < now + lease / 2:
            # Still unreleased, so the slot is still counted: renewing it over-assigns nothing.
            open_assignment.lease_expires_at = now + lease
            Assignment.objects.filter(pk=open_assignment.pk).update(lease_expires_at=open_assignment.lease_expires_at)
        return open_assignment
    item = (
        Item.objects.filter(study=study, claimed__lt=F("overlap"))
        .exclude(assignments__annotator=annotator)
        .order_by("position", "id")
        .select_for_update(skip_locked=True, of=("self",))
        .first()
    )
    if item is None:
        return None
    assignment = Assignment.objects.create(
        study=study,
        item=item,
        annotator=annotator,
        leased_at=now,
        lease_expires_at=now + lease,
        swapped=_swap_for(study.kind, item.payload),
    )
    Item.objects.filter(pk=item.pk).update(claimed=F("claimed") + 1)
    item.claimed += 1
    assignment.item = item
    return assignment


def _swap_for(kind: str, payload: dict[str, Any]) -> bool:
    """Randomise sides per assignment (blinding); only kinds with two sides are swapped."""
    two_sides = kind == StudyKind.PAIRWISE or (kind == StudyKind.RUBRIC and len(payload.get("plans", [])) == 2)
    return two_sides and secrets.randbelow(2) == 1


def _maybe_release(study_id: int) -> None:
    last = _last_release.get(study_id, 0.0)
    if time.monotonic() - last >= RELEASE_EVERY_S:
        _last_release[study_id] = time.monotonic()
        release_expired_leases(study_id=study_id)


def release_expired_leases(*, study_id: int | None = None, limit: int = 1000) -> int:
    """Return expired, unfinished leases to the queue; the number released."""
    now = timezone.now()
    with transaction.atomic():
        expired = Assignment.objects.filter(completed_at=None, released_at=None, lease_expires_at__lt=now)
        if study_id is not None:
            expired = expired.filter(study_id=study_id)
        # SKIP LOCKED: an assignment being submitted right now is left to its submit.
        rows = list(expired.select_for_update(skip_locked=True).order_by("id").values_list("id", "item_id")[:limit])
        if not rows:
            return 0
        Assignment.objects.filter(id__in=[r[0] for r in rows]).update(released_at=now)
        per_item = Counter(item_id for _, item_id in rows)
        for item_id in sorted(per_item):  # a fixed lock order across sweeps
            Item.objects.filter(pk=item_id).update(claimed=F("claimed") - per_item[item_id])
    for sid in {study_id} if study_id is not None else set():
        events.notify_progress(study_id=sid)
    return len(rows)


# --------------------------------------------------------------------------- judgments


def submit_judgment(
    *, annotator: User, assignment_id: int, data: dict[str, Any], time_ms: int | None = None
) -> Judgment:
    """Record one verdict; a repeated submit (double click, retry) returns the first one.

    `data` is the form's cleaned data for the study kind; it is validated against the item
    and un-swapped (stored in the file's A/B order) by evaluation.judgments.
    """
    with transaction.atomic():
        assignment = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("item", "study")
            .get(pk=assignment_id, annotator=annotator)
        )
        if assignment.completed_at is not None:
            if assignment.skipped:
                raise AssignmentClosed(assignment_id)
            return Judgment.objects.get(assignment=assignment)
        if assignment.released_at is not None:
            raise LeaseExpired(assignment_id)
        study, item = assignment.study, assignment.item
        payload = canonical_judgment(kind=study.kind, item_payload=item.payload, data=data, swapped=assignment.swapped)
        now = timezone.now()
        elapsed_ms = int((now - assignment.leased_at).total_seconds() * 1000)
        # The browser's clock of time on task is preferred; the lease clock bounds it.
        spent = min(time_ms, elapsed_ms) if time_ms and time_ms > 0 else elapsed_ms
        try:
            judgment = Judgment.objects.create(
                assignment=assignment,
                study=study,
                item=item,
                annotator=annotator,
                payload=payload,
                time_ms=max(0, spent),
            )
        except IntegrityError:  # pragma: no cover - the row lock above makes this unreachable
            return Judgment.objects.get(assignment=assignment)
        Assignment.objects.filter(pk=assignment.pk).update(completed_at=now)
        Item.objects.filter(pk=item.pk).update(judgment_count=F("judgment_count") + 1)
        flags = payload.get("flagged_rubric") or []
        if flags:
            RubricItemFlag.objects.bulk_create(
                [RubricItemFlag(item=item, rubric_index=i, annotator=annotator) for i in flags],
                ignore_conflicts=True,
            )
        study_id = study.pk
        transaction.on_commit(lambda: events.notify_progress(study_id=study_id))
    return judgment


@transaction.atomic
def skip_assignment(*, annotator: User, assignment_id: int, flag_reason: str = "", flagged: bool = False) -> Assignment:
    """Give an item back (and optionally flag it as broken); this annotator will not see it again."""
    assignment = Assignment.objects.select_for_update(of=("self",)).get(pk=assignment_id, annotator=annotator)
    if assignment.completed_at is not None or assignment.released_at is not None:
        return assignment  # already judged, skipped or released: a repeated skip changes nothing
    now = timezone.now()
    assignment.completed_at = now
    assignment.skipped = True
    assignment.flagged = flagged
    assignment.flag_reason = flag_reason[:500]
    assignment.save(update_fields=["completed_at", "skipped", "flagged", "flag_reason"])
    Item.objects.filter(pk=assignment.item_id).update(claimed=F("claimed") - 1)
    return assignment
