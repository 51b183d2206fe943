"""The annotator queue: lease items, renew and release leases, record judgments and skips.

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
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone
from psycopg.types.json import Jsonb

from arbiter.accounts.models import User
from evaluation import events, selectors
from evaluation.judgments import canonical_judgment
from evaluation.models import Assignment, Item, Judgment, RubricItemFlag, Study, StudyKind
from evaluation.services.locking import write_transaction

RELEASE_EVERY_S = 5.0  # how often one process sweeps a study's expired leases from the queue path
_last_release: dict[int, float] = {}


class LeaseExpired(Exception):
    """The assignment's lease ran out and its item went back to the queue."""


class AssignmentClosed(Exception):
    """The assignment was skipped: there is nothing left to submit to it."""


# Passed as `latest` when the caller has not read the annotator's latest assignment.
UNREAD: Any = object()


def next_assignment(*, annotator: User, study: Study, latest: Assignment | None = UNREAD) -> Assignment | None:
    """The annotator's open assignment in this study, or a newly leased item; None when nothing is left.

    `latest` is the annotator's latest assignment when the caller has just read it
    (selectors.annotation_state), which saves the claim a round trip; a stale value is harmless:
    the unique "one open assignment" constraint refuses a second lease and the retry reads afresh.
    """
    _maybe_release(study.pk)
    for attempt in range(3):
        try:
            if connection.vendor == "postgresql":
                assignment = _claim_postgres(annotator=annotator, study=study, latest=latest)
            else:
                assignment = _claim_serialised(annotator=annotator, study=study)
        except (IntegrityError, OperationalError):
            # IntegrityError: this annotator's other request (a second tab, a retry) opened an
            # assignment first; the next round returns it. OperationalError: a deadlock victim.
            if attempt == 2:
                raise
            latest = UNREAD
            continue
        if assignment is None and release_expired_leases(study_id=study.pk):
            latest = UNREAD
            continue  # abandoned leases just went back: try again
        return assignment
    return None


def _renew_if_needed(assignment: Assignment, study: Study, now: datetime) -> Assignment:
    lease = timedelta(seconds=study.lease_seconds)
    if assignment.lease_expires_at < now + lease / 2:
        # Still unreleased, so the slot is still counted: renewing it over-assigns nothing.
        renewed = Assignment.objects.filter(pk=assignment.pk, completed_at=None, released_at=None).update(
            lease_expires_at=now + lease
        )
        if renewed:
            assignment.lease_expires_at = now + lease
    return assignment


# One statement leases one item: lock a candidate with a free slot (skipping rows other claims hold),
# bump its counter, insert the assignment. A statement is atomic on its own, so no BEGIN/COMMIT
# round trips; the CheckConstraint and the UniqueConstraints back every step. The "not mine"
# test is a correlated subquery on purpose: it stays a per-row probe of the (item, annotator)
# unique index instead of becoming a join over all of this annotator's assignments.
_CLAIM_SQL = """
WITH picked AS (
    SELECT i.id FROM evaluation_item i
    WHERE i.study_id = %(study)s AND i.claimed < i.overlap AND i.position > %(after)s
      AND (SELECT 1 FROM evaluation_assignment a
           WHERE a.item_id = i.id AND a.annotator_id = %(annotator)s LIMIT 1) IS NULL
    ORDER BY i.position, i.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), bumped AS (
    UPDATE evaluation_item SET claimed = evaluation_item.claimed + 1
    FROM picked WHERE evaluation_item.id = picked.id
    RETURNING evaluation_item.id, evaluation_item.payload, evaluation_item.rendered, evaluation_item.position,
              evaluation_item.claimed
)
INSERT INTO evaluation_assignment
    (study_id, item_id, annotator_id, leased_at, lease_expires_at, skipped, flagged, flag_reason, swapped)
SELECT %(study)s, bumped.id, %(annotator)s, %(now)s, %(expires)s, false, false, '',
       CASE WHEN %(kind)s = 'pairwise' OR (%(kind)s = 'rubric' AND jsonb_array_length(bumped.payload->'plans') = 2)
            THEN random() < 0.5 ELSE false END
FROM bumped
RETURNING id, item_id, swapped, (SELECT payload FROM bumped), (SELECT rendered FROM bumped),
          (SELECT position FROM bumped), (SELECT claimed FROM bumped)
"""


# SKIP LOCKED finds nothing when the only items with a free slot are being claimed by someone else at
# this instant (the last slots of a study): the claim then waits for those rows instead, and PostgreSQL
# re-checks `claimed < overlap` once each lock is released. Only a queue that looks empty pays for it.
_CLAIM_WAITING_SQL = _CLAIM_SQL.replace("FOR UPDATE SKIP LOCKED", "FOR UPDATE")


def _claim_postgres(*, annotator: User, study: Study, latest: Assignment | None) -> Assignment | None:
    now = timezone.now()
    if latest is UNREAD:
        latest = selectors.latest_assignment(annotator=annotator, study=study)
    if latest is not None and latest.is_open:
        return _renew_if_needed(latest, study, now)
    expires = now + timedelta(seconds=study.lease_seconds)
    params: dict[str, Any] = {
        "study": study.pk,
        "annotator": annotator.pk,
        "now": now,
        "expires": expires,
        "kind": study.kind,
    }
    # Annotators move forward through the study, so start after the last item this one took; only
    # when the tail is exhausted rescan from the start (for slots that leases or skips gave back).
    starts = [latest.item.position, -1] if latest is not None else [-1]
    # Inside a caller's transaction a failed claim must not poison it: give it a savepoint.
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
        for sql, after in [*((_CLAIM_SQL, a) for a in starts), (_CLAIM_WAITING_SQL, -1)]:
            cursor.execute(sql, {**params, "after": after})
            row = cursor.fetchone()
            if row is not None:
                break
        else:
            return None
    assignment_id, item_id, swapped, payload, rendered, position, claimed = row
    item = Item(
        id=item_id,
        study=study,
        payload=selectors.json_value(payload),
        rendered=selectors.json_value(rendered) or {},
        position=position,
        claimed=claimed,
        overlap=study.overlap,
    )
    return Assignment(
        id=assignment_id,
        study=study,
        item=item,
        annotator=annotator,
        leased_at=now,
        lease_expires_at=expires,
        swapped=swapped,
    )


def _claim_serialised(*, annotator: User, study: Study) -> Assignment | None:
    """The same rules through the ORM, for SQLite (embedded mode), in one serialised write transaction."""
    now = timezone.now()
    with write_transaction():
        latest = selectors.latest_assignment(annotator=annotator, study=study)
        if latest is not None and latest.is_open:
            return _renew_if_needed(latest, study, now)
        item = (
            Item.objects.filter(study=study, claimed__lt=F("overlap"))
            .exclude(assignments__annotator=annotator)
            .order_by("position", "id")
            .only("id", "payload", "rendered", "position", "claimed", "overlap")
            .first()
        )
        if item is None:
            return None
        # The writer's lock makes the read above current; the guard is the database's second word.
        if not Item.objects.filter(pk=item.pk, claimed__lt=F("overlap")).update(claimed=F("claimed") + 1):
            raise OperationalError(f"item {item.pk} filled while being leased")
        assignment = Assignment.objects.create(
            study=study,
            item=item,
            annotator=annotator,
            leased_at=now,
            lease_expires_at=now + timedelta(seconds=study.lease_seconds),
            swapped=_swap_for(study.kind, item.payload),
        )
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
    with write_transaction():
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


# One statement records a judgment: close the assignment only if it is still open and ours (the
# claim that makes a double submit or a late one harmless), bump the item's count, insert the row.
_SUBMIT_SQL = """
WITH closed AS (
    UPDATE evaluation_assignment SET completed_at = %(now)s
    WHERE id = %(assignment)s AND annotator_id = %(annotator)s AND completed_at IS NULL AND released_at IS NULL
    RETURNING id, item_id, study_id, annotator_id
), bumped AS (
    UPDATE evaluation_item SET judgment_count = evaluation_item.judgment_count + 1
    FROM closed WHERE evaluation_item.id = closed.item_id
    RETURNING evaluation_item.id
)
INSERT INTO evaluation_judgment (assignment_id, study_id, item_id, annotator_id, payload, time_ms, created_at)
SELECT closed.id, closed.study_id, closed.item_id, closed.annotator_id, %(payload)s, %(time_ms)s, %(now)s
FROM closed JOIN bumped ON bumped.id = closed.item_id
RETURNING id
"""


def submit_judgment(
    *,
    annotator: User,
    assignment_id: int | None = None,
    assignment: Assignment | None = None,
    data: dict[str, Any],
    time_ms: int | None = None,
) -> Judgment:
    """Record one verdict; a repeated submit (double click, retry) returns the first one.

    `data` is the form's cleaned data for the study kind; it is validated against the item
    and un-swapped (stored in the file's A/B order) by evaluation.judgments. Pass the
    `assignment` (with item and study) when the caller has loaded it already, else its id.
    """
    if assignment is None:
        if assignment_id is None:
            raise Assignment.DoesNotExist("submit_judgment needs an assignment or its id")
        assignment = Assignment.objects.select_related("item", "study").get(pk=assignment_id, annotator=annotator)
    elif assignment.annotator_id != annotator.pk:
        raise Assignment.DoesNotExist(assignment.pk)
    if assignment.completed_at is not None:
        return _closed_outcome(assignment)
    study, item = assignment.study, assignment.item
    payload = canonical_judgment(kind=study.kind, item_payload=item.payload, data=data, swapped=assignment.swapped)
    now = timezone.now()
    elapsed_ms = int((now - assignment.leased_at).total_seconds() * 1000)
    # The browser's clock of time on task is preferred; the lease clock bounds it.
    spent = max(0, min(time_ms, elapsed_ms) if time_ms and time_ms > 0 else elapsed_ms)
    flags = payload.get("flagged_rubric") or []
    params = {"now": now, "assignment": assignment.pk, "annotator": annotator.pk, "payload": payload, "time_ms": spent}
    record = _record_postgres if connection.vendor == "postgresql" else _record_serialised
    # A lone statement is atomic; only rubric flags (a second statement) need a transaction.
    with write_transaction() if flags or connection.in_atomic_block else nullcontext():
        row = record(params)
        if row is None:
            # Not open any more: judged by an earlier submit, skipped, or its lease released.
            fresh = Assignment.objects.select_related("item", "study").get(pk=assignment.pk)
            return _closed_outcome(fresh)
        if flags:
            RubricItemFlag.objects.bulk_create(
                [RubricItemFlag(item_id=item.pk, rubric_index=i, annotator=annotator) for i in flags],
                ignore_conflicts=True,
            )
    study_id = study.pk
    transaction.on_commit(lambda: events.notify_progress(study_id=study_id))
    return Judgment(
        id=row[0],
        assignment=assignment,
        study=study,
        item=item,
        annotator=annotator,
        payload=payload,
        time_ms=spent,
        created_at=now,
    )


def _record_postgres(params: dict[str, Any]) -> tuple[int] | None:
    with connection.cursor() as cursor:
        statement_params: dict[str, Any] = {**params, "payload": Jsonb(params["payload"])}
        cursor.execute(_SUBMIT_SQL, statement_params)
        row: tuple[int] | None = cursor.fetchone()
        return row


def _record_serialised(params: dict[str, Any]) -> tuple[int] | None:
    """The same claim through the ORM, for SQLite (embedded mode), in one serialised write transaction."""
    with write_transaction():
        return _record_orm(params)


def _record_orm(params: dict[str, Any]) -> tuple[int] | None:
    open_row = Assignment.objects.filter(
        pk=params["assignment"], annotator_id=params["annotator"], completed_at=None, released_at=None
    )
    found = open_row.values_list("item_id", "study_id").first()
    if found is None or not open_row.update(completed_at=params["now"]):
        return None
    item_id, study_id = found
    Item.objects.filter(pk=item_id).update(judgment_count=F("judgment_count") + 1)
    judgment = Judgment.objects.create(
        assignment_id=params["assignment"],
        study_id=study_id,
        item_id=item_id,
        annotator_id=params["annotator"],
        payload=params["payload"],
        time_ms=params["time_ms"],
    )
    return (judgment.pk,)


def _closed_outcome(assignment: Assignment) -> Judgment:
    if assignment.released_at is not None and assignment.completed_at is None:
        raise LeaseExpired(assignment.pk)
    if assignment.skipped:
        raise AssignmentClosed(assignment.pk)
    return Judgment.objects.get(assignment=assignment)


def skip_assignment(*, annotator: User, assignment_id: int, flag_reason: str = "", flagged: bool = False) -> Assignment:
    """Give an item back (and optionally flag it as broken); this annotator will not see it again."""
    with write_transaction():
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
