"""Reads for human studies: who may see which study, queue progress, quality and results.

Authorisation lives here: `get_study_for` (researchers: own or shared studies) and
`get_annotation_study_for` (annotators: studies they are assigned to) return the
study or raise Http404, so ids of other people's studies don't leak.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum, TextField
from django.db.models.functions import Cast
from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from arbiter.accounts.models import User
from evaluation import stats
from evaluation.events import ProgressPayload
from evaluation.judgments import agreement_labels, gold_score
from evaluation.models import Assignment, ExportJob, ImportJob, Item, Judgment, RubricItemFlag, Study, StudyKind

# --------------------------------------------------------------------------- access


def study_list_for(*, user: User, archived: bool | None = None, tag: str = "") -> QuerySet[Study]:
    """Studies the user may read; `archived` True/False keeps only archived/other ones (None: all, as the API lists)."""
    qs = Study.objects.select_related("owner").prefetch_related("tags")
    qs = qs.annotate(item_total=Count("items", distinct=True))
    if archived is not None:
        qs = qs.filter(archived_at__isnull=not archived)
    if tag:
        qs = qs.filter(tags__name=tag)
    if user.is_admin_role:
        return qs
    return qs.filter(Q(owner=user) | Q(shared_with=user)).distinct()


def can_view_study(*, user: Any, study_id: int) -> bool:
    if not user.is_authenticated or not user.is_researcher:
        return False
    if user.is_admin_role:
        return Study.objects.filter(pk=study_id).exists()
    return Study.objects.filter(Q(owner=user) | Q(shared_with=user), pk=study_id).exists()


def get_study_for(*, user: User, study_id: int) -> Study:
    """A study the researcher owns or has been shared, else 404."""
    if not can_view_study(user=user, study_id=study_id):
        raise Http404("No such study.")
    return Study.objects.select_related("owner").get(pk=study_id)


def can_edit_study(*, user: User, study: Study) -> bool:
    """Sharing gives read access; only the owner (or an admin) changes a study."""
    return user.is_admin_role or study.owner_id == user.pk


def get_annotation_study_for(*, user: User, study_id: int) -> Study:
    """A study the annotator is assigned to (admins may try any), else 404."""
    qs = Study.objects.filter(pk=study_id)
    if not user.is_admin_role:
        qs = qs.filter(annotators=user, archived_at__isnull=True)  # an archived study hands out nothing
    study = qs.first()
    if study is None:
        raise Http404("No such study.")
    return study


ITEM_STATUSES = {
    "all": "All",
    "unjudged": "Not judged yet",
    "judged": "Judged",
    "waiting": "Waiting for a trajectory",
    "flagged": "Flagged at import",
    "gold": "Gold",
}


def item_list(*, study: Study, query: str = "", status: str = "all") -> QuerySet[Item]:
    """A study's items in queue order, searched in their text and id, filtered by status."""
    items = Item.objects.filter(study=study).order_by("position", "id")
    if query:
        text = Cast("payload", output_field=TextField())
        items = items.annotate(text=text).filter(Q(text__icontains=query) | Q(external_id__icontains=query))
    if status == "unjudged":
        items = items.filter(judgment_count=0, waiting=False)
    elif status == "judged":
        items = items.filter(judgment_count__gt=0)
    elif status == "waiting":
        items = items.filter(waiting=True)
    elif status == "flagged":
        items = items.filter(payload__has_key="flags")
    elif status == "gold":
        items = items.filter(is_gold=True)
    return items.annotate(automatic=Count("automatic_judgments"))


def get_item_for(*, study: Study, item_id: int) -> Item:
    """An item of this study (which the caller may see), else 404."""
    item = Item.objects.filter(study=study, pk=item_id).first()
    if item is None:
        raise Http404("No such item.")
    return item


def import_for(*, study: Study, import_id: int) -> ImportJob:
    job = ImportJob.objects.filter(study=study, pk=import_id).first()
    if job is None:
        raise Http404("No such import.")
    return job


def recent_imports(*, study: Study, limit: int = 10) -> list[ImportJob]:
    return list(ImportJob.objects.filter(study=study).order_by("-created_at", "-id")[:limit])


def export_for(*, study: Study, export_id: int) -> ExportJob:
    job = ExportJob.objects.filter(study=study, pk=export_id).first()
    if job is None:
        raise Http404("No such export.")
    return job


# --------------------------------------------------------------------------- progress


def study_progress(*, study_id: int) -> ProgressPayload:
    agg = Item.objects.filter(study_id=study_id).aggregate(
        items=Count("id"), judgments=Sum("judgment_count"), claimed=Sum("claimed"), target=Sum("overlap")
    )
    judgments, target = agg["judgments"] or 0, agg["target"] or 0
    active = (
        Assignment.objects.filter(study_id=study_id, completed_at=None, released_at=None)
        .values("annotator_id")
        .distinct()
        .count()
    )
    return {
        "kind": "progress",
        "seq": judgments,
        "items": agg["items"] or 0,
        "judgments": judgments,
        "target": target,
        "open_leases": (agg["claimed"] or 0) - judgments,
        "annotators_active": active,
        "percent": round(100 * judgments / target, 1) if target else 0.0,
    }


@dataclass(frozen=True)
class AnnotatorProgress:
    done: int
    total: int


def _share(*, study: Study, members: int, done: int) -> AnnotatorProgress:
    items = study.item_count
    share = min(items, math.ceil(items * study.overlap / max(1, members)))
    return AnnotatorProgress(done, max(share, done))


def annotator_progress(*, study: Study, annotator: User) -> AnnotatorProgress:
    """ "12 of 50": judgments given, of this annotator's fair share of the study (items × overlap ÷ annotators)."""
    members = Study.annotators.through._meta.db_table
    judgments = Judgment._meta.db_table
    with connection.cursor() as cursor:
        # One round trip for both counts: this runs on every item the annotator opens.
        cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM {judgments} WHERE study_id = %s AND annotator_id = %s),"  # noqa: S608
            f" (SELECT COUNT(*) FROM {members} WHERE study_id = %s)",
            [study.pk, annotator.pk, study.pk],
        )
        done, n_annotators = cursor.fetchone()
    return _share(study=study, members=n_annotators, done=done)


# --------------------------------------------------------------------------- the annotator's page (hot path)

# One round trip for everything the next-item page needs before it leases: the study, whether the
# user may annotate it, their progress, and their latest assignment (the open one, if any: a new
# one is only made when none is open) with its item's content while it is open. Raw and portable
# (PostgreSQL and SQLite) on purpose: this runs on every item an annotator opens, and the ORM's
# query compilation cost more than the query.
_STATE_SQL = """
SELECT s.id, s.owner_id, s.name, s.kind, s.instructions, s.overlap, s.lease_seconds, s.accuracy_threshold,
       s.scale_labels, s.item_count, s.created_at, s.text_format,
       (SELECT COUNT(*) FROM evaluation_study_annotators m WHERE m.study_id = s.id),
       (SELECT COUNT(*) FROM evaluation_judgment j WHERE j.study_id = s.id AND j.annotator_id = %(user)s),
       {assignment}
FROM evaluation_study s
LEFT JOIN evaluation_assignment a ON a.id = (
    SELECT MAX(x.id) FROM evaluation_assignment x WHERE x.study_id = s.id AND x.annotator_id = %(user)s)
LEFT JOIN evaluation_item i ON i.id = a.item_id
WHERE s.id = %(study)s
  AND (%(any)s OR EXISTS (SELECT 1 FROM evaluation_study_annotators m WHERE m.study_id = s.id AND m.user_id = %(user)s))
  AND (%(any)s OR s.archived_at IS NULL)
"""
_ASSIGNMENT_COLUMNS = """a.id, a.item_id, a.leased_at, a.lease_expires_at, a.completed_at, a.released_at, a.skipped,
       a.swapped, i.position,
       CASE WHEN a.completed_at IS NULL AND a.released_at IS NULL THEN i.payload END,
       CASE WHEN a.completed_at IS NULL AND a.released_at IS NULL THEN i.rendered END"""
_LATEST_SQL = f"""
SELECT {_ASSIGNMENT_COLUMNS}
FROM evaluation_assignment a JOIN evaluation_item i ON i.id = a.item_id
WHERE a.id = (SELECT MAX(x.id) FROM evaluation_assignment x WHERE x.study_id = %(study)s AND x.annotator_id = %(user)s)
"""  # noqa: S608 - no user input in the f-string


@dataclass(frozen=True)
class AnnotationState:
    study: Study
    latest: Assignment | None
    progress: AnnotatorProgress


def json_value(raw: Any) -> Any:
    """A JSON column read through a raw cursor: Django hands PostgreSQL's jsonb over as text, SQLite too."""
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw


def db_datetime(raw: Any) -> Any:
    """A datetime (or NULL) read through a raw cursor: SQLite gives naive UTC (or text), PostgreSQL aware."""
    value = parse_datetime(raw) if isinstance(raw, str) else raw
    if isinstance(value, datetime) and not timezone.is_aware(value):
        return value.replace(tzinfo=UTC)
    return value


def _assignment_from_row(row: Sequence[Any], *, study: Study, annotator: User) -> Assignment | None:
    aid, item_id, leased_at, expires, completed_at, released_at, skipped, swapped, position, payload, rendered = row
    if aid is None:
        return None
    item = Item(
        id=item_id,
        study=study,
        position=position,
        payload=json_value(payload) or {},
        rendered=json_value(rendered) or {},
        overlap=study.overlap,
    )
    return Assignment(
        id=aid,
        study=study,
        item=item,
        annotator=annotator,
        leased_at=db_datetime(leased_at),
        lease_expires_at=db_datetime(expires),
        completed_at=db_datetime(completed_at),
        released_at=db_datetime(released_at),
        skipped=bool(skipped),
        swapped=bool(swapped),
    )


def annotation_state(*, user: User, study_id: int) -> AnnotationState:
    """The study (one the user annotates, not archived; admins may try any, else 404), their progress and latest
    assignment."""
    sql = _STATE_SQL.format(assignment=_ASSIGNMENT_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"user": user.pk, "study": study_id, "any": bool(user.is_admin_role)})
        row = cursor.fetchone()
    if row is None:
        raise Http404("No such study.")
    sid, owner_id, name, kind, instructions, overlap, lease_s, threshold, scale, item_count, created, fmt = row[:12]
    study = Study(
        id=sid,
        owner_id=owner_id,
        name=name,
        kind=kind,
        instructions=instructions,
        overlap=overlap,
        lease_seconds=lease_s,
        accuracy_threshold=threshold,
        scale_labels=json_value(scale) or [],
        item_count=item_count,
        created_at=db_datetime(created),
        text_format=fmt,
    )
    members, done = row[12], row[13]
    latest = _assignment_from_row(row[14:], study=study, annotator=user)
    return AnnotationState(study, latest, _share(study=study, members=members, done=done))


def latest_assignment(*, annotator: User, study: Study) -> Assignment | None:
    """The annotator's latest assignment in the study (the open one, if any), with its item while open."""
    with connection.cursor() as cursor:
        cursor.execute(_LATEST_SQL, {"study": study.pk, "user": annotator.pk})
        row = cursor.fetchone()
    return None if row is None else _assignment_from_row(row, study=study, annotator=annotator)


# The submit's lookup: the requester's assignment in a study they are (still) assigned to, with what
# the form needs. The item's payload is read only for the kinds whose form is shaped by it.
_OWN_SQL = """
SELECT a.id, a.item_id, a.leased_at, a.lease_expires_at, a.completed_at, a.released_at, a.skipped, a.swapped,
       s.owner_id, s.name, s.kind, s.instructions, s.overlap, s.lease_seconds, s.scale_labels, s.item_count,
       CASE WHEN s.kind IN ('rubric', 'violation') THEN i.payload END
FROM evaluation_assignment a
JOIN evaluation_study s ON s.id = a.study_id
JOIN evaluation_item i ON i.id = a.item_id
WHERE a.id = %(assignment)s AND a.study_id = %(study)s AND a.annotator_id = %(user)s
  AND (%(any)s OR EXISTS (SELECT 1 FROM evaluation_study_annotators m WHERE m.study_id = s.id AND m.user_id = %(user)s))
"""


def own_assignment(*, user: User, study_id: int, assignment_id: int) -> Assignment | None:
    """The requester's assignment (with study and item) in a study they annotate; None when not theirs."""
    params = {"assignment": assignment_id, "study": study_id, "user": user.pk, "any": bool(user.is_admin_role)}
    with connection.cursor() as cursor:
        cursor.execute(_OWN_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    aid, item_id, leased_at, expires, completed_at, released_at, skipped, swapped = row[:8]
    owner_id, name, kind, instructions, overlap, lease_s, scale, item_count, payload = row[8:]
    study = Study(
        id=study_id,
        owner_id=owner_id,
        name=name,
        kind=kind,
        instructions=instructions,
        overlap=overlap,
        lease_seconds=lease_s,
        scale_labels=json_value(scale) or [],
        item_count=item_count,
    )
    item = Item(id=item_id, study=study, payload=json_value(payload) or {}, overlap=overlap)
    return Assignment(
        id=aid,
        study=study,
        item=item,
        annotator=user,
        leased_at=db_datetime(leased_at),
        lease_expires_at=db_datetime(expires),
        completed_at=db_datetime(completed_at),
        released_at=db_datetime(released_at),
        skipped=bool(skipped),
        swapped=bool(swapped),
    )


def annotator_queue(*, user: User) -> list[tuple[Study, AnnotatorProgress]]:
    studies = Study.objects.filter(annotators=user, archived_at__isnull=True).order_by("-created_at")
    return [(s, annotator_progress(study=s, annotator=user)) for s in studies]


def flagged_assignments(*, study: Study) -> QuerySet[Assignment]:
    return Assignment.objects.filter(study=study, flagged=True).select_related("item", "annotator").order_by("-id")


# --------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class AnnotatorQuality:
    username: str
    judgments: int
    gold_judged: int
    accuracy: float | None
    median_time_s: float | None
    skipped: int
    flagged: int
    below_threshold: bool


@dataclass
class Agreement:
    level: str
    units: int = 0
    alpha: float | None = None
    cohen: float | None = None
    cohen_pair: tuple[str, str] | None = None
    cohen_units: int = 0
    fleiss: float | None = None
    fleiss_units: int = 0


@dataclass
class Quality:
    annotators: list[AnnotatorQuality] = field(default_factory=list)
    agreement: Agreement = field(default_factory=lambda: Agreement("nominal"))


def _judgment_rows(study: Study, *, with_item_payload: bool) -> list[dict[str, Any]]:
    fields = ["annotator__username", "item_id", "payload", "time_ms", "item__is_gold", "item__expected"]
    if with_item_payload:
        fields.append("item__payload")
    return list(Judgment.objects.filter(study=study).order_by("id").values(*fields))


def study_quality(*, study: Study) -> Quality:
    kind = study.kind
    rows = _judgment_rows(study, with_item_payload=kind == StudyKind.VIOLATION)
    per_annotator: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_annotator[row["annotator__username"]].append(row)
    closed = Counter(
        (r["annotator__username"], r["skipped"], r["flagged"])
        for r in Assignment.objects.filter(study=study, completed_at__isnull=False).values(
            "annotator__username", "skipped", "flagged"
        )
    )
    names = sorted(set(per_annotator) | {name for name, _, _ in closed})
    annotators = []
    for name in names:
        mine = per_annotator.get(name, [])
        gold = [
            gold_score(kind=kind, payload=r["payload"], expected=r["item__expected"])
            for r in mine
            if r["item__is_gold"]
        ]
        accuracy = sum(gold) / len(gold) if gold else None
        times = [r["time_ms"] / 1000 for r in mine]
        annotators.append(
            AnnotatorQuality(
                username=name,
                judgments=len(mine),
                gold_judged=len(gold),
                accuracy=accuracy,
                median_time_s=statistics.median(times) if times else None,
                skipped=sum(n for (who, skipped, _), n in closed.items() if who == name and skipped),
                flagged=sum(n for (who, _, flagged), n in closed.items() if who == name and flagged),
                below_threshold=accuracy is not None and accuracy < study.accuracy_threshold,
            )
        )
    return Quality(annotators, _agreement(kind, rows, study.overlap))


def _agreement(kind: str, rows: list[dict[str, Any]], overlap: int) -> Agreement:
    units: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in rows:
        labels = agreement_labels(
            kind=kind, item_id=row["item_id"], payload=row["payload"], item_payload=row.get("item__payload") or {}
        )
        for unit, value in labels.items():
            units[unit][row["annotator__username"]] = value
    level: stats.Level = "ordinal" if kind == StudyKind.RATING else "nominal"
    result = Agreement(level)
    pairable = [list(by.values()) for by in units.values() if len(by) >= 2]
    result.units = len(pairable)
    result.alpha = stats.krippendorff_alpha_units(pairable, level=level)
    coders = sorted({name for by in units.values() for name in by})
    if len(coders) == 2:
        first, second = coders
        both = [by for by in units.values() if first in by and second in by]
        result.cohen_pair, result.cohen_units = (first, second), len(both)
        if both:
            result.cohen = stats.cohen_kappa([by[first] for by in both], [by[second] for by in both])
    if overlap >= 2:
        full = [by for by in units.values() if len(by) == overlap]
        categories = sorted({v for by in full for v in by.values()}, key=str)
        if full and len(categories) >= 1:
            table = [[Counter(by.values())[c] for c in categories] for by in full]
            result.fleiss, result.fleiss_units = stats.fleiss_kappa(table), len(full)
    return result


# --------------------------------------------------------------------------- results


def pairwise_battles(*, study: Study) -> list[stats.Battle]:
    rows = Judgment.objects.filter(study=study).values_list(
        "payload__choice", "item__payload__model_a", "item__payload__model_b"
    )
    return [stats.Battle(str(a), str(b), choice) for choice, a, b in rows.iterator(chunk_size=5000)]


@dataclass(frozen=True)
class RubricRow:
    item_id: int
    index: int
    text: str
    rate: stats.PassRate
    flags: int
    goal: str = ""  # the item's own text (its research goal), shown instead of its id


@dataclass
class RubricResults:
    per_rubric_item: list[RubricRow]
    per_plan: list[stats.PassRate]
    preference: list[stats.WinRate]


def rubric_results(*, study: Study) -> RubricResults:
    items = {i.pk: i.payload for i in Item.objects.filter(study=study).only("id", "payload")}
    flags = Counter(RubricItemFlag.objects.filter(item__study=study).values_list("item_id", "rubric_index").iterator())
    by_rubric_item: list[tuple[str, str]] = []
    by_plan: list[tuple[str, str]] = []
    battles = []
    for item_id, payload in Judgment.objects.filter(study=study).values_list("item_id", "payload").iterator():
        plans = items[item_id]["plans"]
        for p, verdicts in enumerate(payload["verdicts"]):
            for i, verdict in enumerate(verdicts):
                by_rubric_item.append((f"{item_id}:{i}", verdict))
                by_plan.append((plans[p]["model"], verdict))
        if payload.get("preference"):
            battles.append(stats.Battle(plans[0]["model"], plans[1]["model"], payload["preference"]))
    rows = []
    for rate in stats.pass_rates(by_rubric_item):
        item_id, index = (int(x) for x in rate.key.split(":"))
        text = items[item_id]["rubric"][index]
        goal = " ".join(str(items[item_id].get("goal", "")).split())[:120]
        rows.append(RubricRow(item_id, index, text, rate, flags.get((item_id, index), 0), goal))
    rows.sort(key=lambda r: (r.item_id, r.index))
    return RubricResults(rows, sorted(stats.pass_rates(by_plan), key=lambda r: r.key), stats.win_rates(battles))


@dataclass(frozen=True)
class RatingRow:
    model: str
    n: int
    mean: float
    low: float
    high: float
    counts: list[int]


def rating_results(*, study: Study) -> list[RatingRow]:
    scale = len(study.scale)
    per_model: dict[str, list[int]] = defaultdict(list)
    for rating, model in Judgment.objects.filter(study=study).values_list("payload__rating", "item__payload__model"):
        per_model[str(model)].append(int(rating))
    rows = []
    for model, ratings in sorted(per_model.items()):
        n = len(ratings)
        mean = sum(ratings) / n
        sd = statistics.stdev(ratings) if n > 1 else 0.0
        half = 1.96 * sd / math.sqrt(n)  # normal approximation to the mean's 95% interval
        counts = [ratings.count(v) for v in range(1, scale + 1)]
        rows.append(RatingRow(model, n, mean, mean - half, mean + half, counts))
    return rows
