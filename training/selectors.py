"""Reads of the training app: who may see which run, run lists, chart series (downsampled), logs, diffs.

Visibility rule (documented in the README's access table): a researcher sees the runs they own
and runs their owner marked shared; admins see every run; annotators see none. Anything a user
may not see is "not found" (404), so run ids do not leak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
from django.db import connection
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.http import Http404

from arbiter.accounts.models import User
from training.downsample import Bucket, Point, merge_buckets, minmax_points
from training.models import (
    CHUNK_STEPS,
    Checkpoint,
    LogLine,
    MetricChunk,
    MetricKey,
    MetricSummary,
    Run,
    RunStatus,
    RunTable,
)
from training.services.ingest import FLOAT_DTYPE, ROLLUP_WIDTHS, STEP_DTYPE

DEFAULT_BUCKETS = 1000
MAX_BUCKETS = 5000


def visible_runs(*, user: Any) -> QuerySet[Run]:
    if not getattr(user, "is_authenticated", False) or not user.is_researcher:
        return Run.objects.none()
    if user.is_admin_role:
        return Run.objects.all()
    return Run.objects.filter(Q(owner=user) | Q(shared=True))


def can_view_run(*, user: Any, run_id: int) -> bool:
    return visible_runs(user=user).filter(id=run_id).exists()


def can_change_run(*, user: User, run: Run) -> bool:
    return run.owner_id == user.id or user.is_admin_role


def get_run_for(*, user: Any, run_id: int, for_change: bool = False) -> Run:
    """The run if `user` may see it (and change it, with for_change), else Http404."""
    run = visible_runs(user=user).select_related("owner", "parent").filter(id=run_id).first()
    if run is None or (for_change and not can_change_run(user=user, run=run)):
        raise Http404("No such run.")
    return run


@dataclass(frozen=True)
class RunListFilters:
    status: str = ""
    recipe: str = ""
    tag: str = ""
    q: str = ""
    sort: str = "-created"  # -created | created | name | -name | metric:<key> | -metric:<key>
    archived: bool = False  # the archived runs instead of the others


def run_list(*, user: Any, filters: RunListFilters) -> QuerySet[Run]:
    """The run list page's rows: tags prefetched, the sort metric's final value annotated as `sort_value`."""
    qs = visible_runs(user=user).select_related("owner").prefetch_related("tags")
    qs = qs.filter(archived_at__isnull=not filters.archived)
    if filters.status in RunStatus.values:
        qs = qs.filter(status=filters.status)
    if filters.recipe:
        qs = qs.filter(recipe=filters.recipe)
    if filters.tag:
        qs = qs.filter(tags__name=filters.tag)
    if filters.q:
        qs = qs.filter(name__icontains=filters.q)
    sort = filters.sort or "-created"
    desc = sort.startswith("-")
    field = sort.lstrip("-")
    if field.startswith("metric:"):
        key = field.removeprefix("metric:")
        last = MetricSummary.objects.filter(run=OuterRef("pk"), key__name=key).values("last_value")[:1]
        qs = qs.annotate(sort_value=Subquery(last))
        order = F("sort_value").desc(nulls_last=True) if desc else F("sort_value").asc(nulls_last=True)
        return qs.order_by(order, "-id")
    column = {"created": "created_at", "name": "name", "status": "status"}.get(field, "created_at")
    return qs.order_by(f"-{column}" if desc else column, "-id")


# Pages list metric names as choices: bounded whatever the runs logged (runs are limited to
# RUN_MAX_METRIC_KEYS each, but a list page shows hundreds of runs, and old runs may predate the limit).
MAX_KEY_CHOICES = 50  # column and sort choices of the run list
MAX_COMPARE_KEYS = 1000  # metric choices of the compare page (a single run's limit)


def summary_keys(*, runs: QuerySet[Run] | list[Run], limit: int = MAX_COMPARE_KEYS) -> list[str]:
    """Metric names of these runs, at most `limit`: those most of the runs share first, then alphabetically.

    Returned sorted by name. Shared names are the ones worth comparing or sorting by; a name only one
    run has is still reachable by typing it (`?sort=metric:<name>`, `?cols=<name>`).
    """
    ids = [r.id for r in runs] if isinstance(runs, list) else runs.values("id")
    rows = (
        MetricSummary.objects.filter(run_id__in=ids)
        .values("key__name")
        .annotate(runs=Count("run_id"))
        .order_by("-runs", "key__name")
        .values_list("key__name", flat=True)[:limit]
    )
    return sorted(rows)


def existing_keys(*, runs: QuerySet[Run] | list[Run], names: list[str]) -> list[str]:
    """Those of `names` that at least one of these runs has, in the order given."""
    ids = [r.id for r in runs] if isinstance(runs, list) else runs.values("id")
    found = set(MetricSummary.objects.filter(run_id__in=ids, key__name__in=names).values_list("key__name", flat=True))
    return [n for n in names if n in found]


def final_values(*, run_ids: list[int], keys: list[str]) -> dict[tuple[int, str], float]:
    """The last value of each of `keys` in each run, in one query: {(run_id, key): value} (absent when unlogged)."""
    rows = MetricSummary.objects.filter(run_id__in=run_ids, key__name__in=keys).values_list(
        "run_id", "key__name", "last_value"
    )
    return {(run_id, key): value for run_id, key, value in rows}


class SummaryRow(TypedDict):
    """One metric of a run as the run page and the state API show it (a `.values()` row of MetricSummary)."""

    key__name: str
    n: int
    last_step: int
    last_value: float
    min_value: float
    max_value: float


def run_summaries(*, run: Run) -> list[SummaryRow]:
    return list(
        MetricSummary.objects.filter(run=run)
        .order_by("key__name")
        .values("key__name", "n", "last_step", "last_value", "min_value", "max_value")
    )


def run_parent(*, user: Any, run: Run) -> Run | None:
    """The run this one retried or resumed, if the user may see it."""
    if run.parent_id is None:
        return None
    return visible_runs(user=user).filter(id=run.parent_id).first()


def run_children(*, user: Any, run: Run) -> list[Run]:
    """Retries and resumes of this run that the user may see, oldest first."""
    children = visible_runs(user=user).filter(parent_id=run.id).select_related("resume_checkpoint")
    return list(children.order_by("created_at", "id"))


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: its latest step, the step it stops at (when its config says), time left at its pace."""

    step: int
    total: int | None
    eta_s: float | None

    @property
    def percent(self) -> float | None:
        return None if not self.total else min(100.0, 100.0 * self.step / self.total)


def run_progress(*, run: Run) -> RunProgress | None:
    """Step N of M (M is the config's `max_steps`) and an ETA from the pace between the first and latest point.

    The pace is measured on the series that reached the furthest step, from its own first point (not from
    `started_at`: loading a model is not training), so a resumed run counts only the steps it trained.
    System metrics are left out: their "step" is a sample number.
    """
    latest = (
        MetricSummary.objects.filter(run=run)
        .exclude(key__name__startswith="system/")
        .order_by("-last_step", "-n")
        .values("key_id", "last_step", "last_time")
        .first()
    )
    if latest is None:
        return None
    step = int(latest["last_step"])
    raw_total = (run.config or {}).get("max_steps")
    total = raw_total if isinstance(raw_total, int) and not isinstance(raw_total, bool) and raw_total > 0 else None
    eta_s = None
    if run.status == RunStatus.RUNNING and total is not None and step < total:
        first = (
            MetricChunk.objects.filter(run_id=run.id, key_id=latest["key_id"])
            .order_by("chunk")
            .values_list("steps", "times")
            .first()
        )
        if first is not None:
            first_step = int(np.frombuffer(first[0], dtype=STEP_DTYPE, count=1)[0])
            first_time = float(np.frombuffer(first[1], dtype=FLOAT_DTYPE, count=1)[0])
            elapsed = float(latest["last_time"]) - first_time
            if step > first_step and elapsed > 0:
                eta_s = (total - step) * elapsed / (step - first_step)
    return RunProgress(step=step, total=total, eta_s=eta_s)


# A Python exception line ("ValueError: ...", "torch.OutOfMemoryError: ..."), or a line that says it is an error.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault)\b|.*\berror\b)", re.IGNORECASE)
ERROR_SCAN_LINES = 200


def last_error_line(*, run: Run) -> str | None:
    """The line that says why a failed run failed: its last exception line on stderr, else its last stderr line.

    The supervisor's own "[arbiter] engine exited with code 1" is a fallback only: it says what the exit code
    already says. A run that never logged (the engine did not start) gets its last transition's note.
    """
    if run.status not in (RunStatus.FAILED, RunStatus.LOST):
        return None
    lines = [
        text.strip()
        for text in LogLine.objects.filter(run=run, stream="stderr")
        .order_by("-id")
        .values_list("text", flat=True)[:ERROR_SCAN_LINES]
        if text.strip()
    ]
    own = [t for t in lines if not t.startswith("[arbiter]")]
    line = next((t for t in own if _ERROR_LINE.match(t)), None) or (own[0] if own else None)
    if line is None:
        line = lines[0] if lines else run.transitions.order_by("-at", "-id").values_list("note", flat=True).first()
    return line[:500] if line else None


def run_contents(*, run: Run) -> dict[str, int]:
    """What deleting a run removes, counted for its confirmation page."""
    return {
        "metric series": MetricSummary.objects.filter(run=run).count(),
        "log lines": LogLine.objects.filter(run=run).count(),
        "checkpoint records": run.checkpoints.count(),
        "sample tables": RunTable.objects.filter(run=run).count(),
    }


def last_checkpoint(*, run: Run) -> Checkpoint | None:
    return run.checkpoints.order_by("-step").first()


CHECKPOINTS_PER_PAGE = 20


@dataclass(frozen=True)
class CheckpointRow:
    checkpoint: Checkpoint
    size: int | None  # bytes in the store; None when its files are gone or it is not in the store


@dataclass(frozen=True)
class CheckpointPage:
    rows: list[CheckpointRow]
    page: int
    pages: int
    total: int


def checkpoint_page(*, run: Run, page: int = 1, per_page: int = CHECKPOINTS_PER_PAGE) -> CheckpointPage:
    """One page of the run's checkpoints, newest step first, with their sizes.

    Sizes come from the checkpoint's artifact row (measured when the run reported it); a row without one (reported
    before sizes were kept) is measured in the store now, which a page of `per_page` bounds.
    """
    from artifacts import uris
    from artifacts.models import Artifact
    from artifacts.services import checkpoint_uri, stored_size

    total = run.checkpoints.count()
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    found = list(run.checkpoints.order_by("-step")[(page - 1) * per_page : page * per_page])
    places: dict[int, str] = {}
    for checkpoint in found:
        try:
            places[checkpoint.id] = str(checkpoint_uri(run=run, value=checkpoint.path))
        except (uris.BadUri, ValueError):  # outside the run's location (an old row): not downloadable either
            continue
    sizes = dict(Artifact.objects.filter(uri__in=places.values()).values_list("uri", "size"))
    rows = []
    for checkpoint in found:
        place = places.get(checkpoint.id)
        size = sizes.get(place) if place else None
        if place and not size:
            try:
                size = stored_size(uris.parse(place)) or None
            except Exception:  # the store is unreachable: the row shows no size and no link, the page still renders
                size = None
        rows.append(CheckpointRow(checkpoint, size))
    return CheckpointPage(rows, page, pages, total)


def metric_series(
    *, run_id: int, key: str, start: int | None = None, end: int | None = None, buckets: int = DEFAULT_BUCKETS
) -> dict[str, Any]:
    """A series drawn at `buckets` screen columns over steps [start, end] (the whole run by default).

    Cost does not grow with the series: spans wider than `buckets` x the finest rollup width read
    rollup rows (about `buckets` to 32 x `buckets` of them); narrower spans read the raw points
    (at most 32 x `buckets`) — which is also "full resolution when zoomed in".
    """
    buckets = max(10, min(MAX_BUCKETS, buckets))
    key_id = MetricKey.objects.filter(name=key).values_list("id", flat=True).first()
    summary = (
        MetricSummary.objects.filter(run_id=run_id, key_id=key_id).values("n", "last_step").first() if key_id else None
    )
    out: dict[str, Any] = {"key": key, "points": [], "downsampled": False, "total": 0, "start": start, "end": end}
    if key_id is None or summary is None:
        return out
    out["total"] = summary["n"]
    lo = start if start is not None else first_step(run_id=run_id, key_id=key_id)
    hi = end if end is not None else summary["last_step"]
    if lo is None or hi < lo:
        return out
    span = hi - lo + 1
    # Each screen bucket draws two points, so a rollup with >= buckets/2 rows in the span is as good.
    widths = [w for w in ROLLUP_WIDTHS if span // w >= buckets // 2] if connection.vendor == "postgresql" else []
    if not widths:
        raw = series_points(run_id=run_id, key_id=key_id, lo=lo, hi=hi)
        rows = minmax_points(raw, buckets=buckets, lo=lo, hi=hi + 1)
        out["downsampled"] = len(rows) < len(raw)
    else:
        rows = _from_rollups(run_id=run_id, key_id=key_id, width=widths[-1], lo=lo, hi=hi, buckets=buckets)
        out["downsampled"] = True
    out["points"] = [[int(s), v, t] for s, v, t in rows]
    out["start"], out["end"] = lo, hi
    return out


def first_step(*, run_id: int, key_id: int) -> int | None:
    """The series' first step: the first element of its first chunk."""
    steps = (
        MetricChunk.objects.filter(run_id=run_id, key_id=key_id)
        .order_by("chunk")
        .values_list("steps", flat=True)
        .first()
    )
    return None if steps is None else int(np.frombuffer(steps, dtype=STEP_DTYPE, count=1)[0])


def series_points(*, run_id: int, key_id: int, lo: int = 0, hi: int = 2**62) -> list[tuple[int, float, float]]:
    """Raw points of a series with lo <= step <= hi, as (step, value, wall time) in step order."""
    chunks = MetricChunk.objects.filter(
        run_id=run_id, key_id=key_id, chunk__gte=lo // CHUNK_STEPS, chunk__lte=hi // CHUNK_STEPS
    ).order_by("chunk")
    rows = list(chunks.values_list("steps", "values", "times"))
    if not rows:
        return []
    steps = np.concatenate([np.frombuffer(r[0], dtype=STEP_DTYPE) for r in rows])
    values = np.concatenate([np.frombuffer(r[1], dtype=FLOAT_DTYPE) for r in rows])
    times = np.concatenate([np.frombuffer(r[2], dtype=FLOAT_DTYPE) for r in rows])
    keep = slice(int(np.searchsorted(steps, lo, "left")), int(np.searchsorted(steps, hi, "right")))
    return list(zip(steps[keep].tolist(), values[keep].tolist(), times[keep].tolist(), strict=True))


MAX_HISTORY_POINTS = 2_000_000  # per call: ~70 MB of JSON; past it, ask for fewer keys or a step range


class HistoryTooLarge(Exception):
    def __init__(self, points: int) -> None:
        super().__init__(f"{points:,} points")
        self.points = points


@dataclass(frozen=True)
class SeriesColumns:
    """Every point of one series in a step range, as columns sorted by step."""

    key: str
    steps: np.ndarray  # int64
    values: np.ndarray  # float64
    times: np.ndarray  # float64, unix seconds


def run_history(
    *, run_id: int, keys: list[str] | None = None, start: int | None = None, end: int | None = None
) -> list[SeriesColumns]:
    """Every stored point of `keys` (all the run's series by default) with start <= step <= end.

    One query for the point counts, one for the chunks of every key: the cost is reading the
    packed arrays and concatenating them, ~24 bytes a point, no per-point Python. Keys asked for
    but never logged come back empty, in the order asked. HistoryTooLarge past MAX_HISTORY_POINTS.
    """
    summaries = MetricSummary.objects.filter(run_id=run_id)
    if keys is not None:
        summaries = summaries.filter(key__name__in=keys)
    found = {name: (key_id, n) for key_id, name, n in summaries.values_list("key_id", "key__name", "n")}
    names = list(dict.fromkeys(keys)) if keys is not None else sorted(found)
    total = sum(found[name][1] for name in names if name in found)
    if total > MAX_HISTORY_POINTS:
        raise HistoryTooLarge(total)
    chunks = MetricChunk.objects.filter(run_id=run_id, key_id__in=[found[n][0] for n in names if n in found])
    if start is not None:
        chunks = chunks.filter(chunk__gte=max(0, start) // CHUNK_STEPS)
    if end is not None:
        chunks = chunks.filter(chunk__lte=max(-1, end) // CHUNK_STEPS)
    parts: dict[int, list[tuple[Any, Any, Any]]] = {}  # bytes or memoryview, as the driver gives them
    for key_id, steps, values, times in chunks.order_by("key_id", "chunk").values_list(
        "key_id", "steps", "values", "times"
    ):
        parts.setdefault(key_id, []).append((steps, values, times))
    out = []
    for name in names:
        rows = parts.get(found[name][0], []) if name in found else []
        s, v, t = (
            (
                np.concatenate([np.frombuffer(r[i], dtype=d) for r in rows])
                for i, d in enumerate((STEP_DTYPE, FLOAT_DTYPE, FLOAT_DTYPE))
            )
            if rows
            else (np.empty(0, dtype=STEP_DTYPE), np.empty(0, dtype=FLOAT_DTYPE), np.empty(0, dtype=FLOAT_DTYPE))
        )
        if start is not None or end is not None:
            lo = int(np.searchsorted(s, start, "left")) if start is not None else 0
            hi = int(np.searchsorted(s, end, "right")) if end is not None else len(s)
            s, v, t = s[lo:hi], v[lo:hi], t[lo:hi]
        out.append(SeriesColumns(name, s, v, t))
    return out


def stored_points(*, run_id: int) -> int:
    """How many points a run has stored, all series together (from the chunks themselves)."""
    return int(MetricChunk.objects.filter(run_id=run_id).aggregate(n=Sum("n"))["n"] or 0)


def _from_rollups(*, run_id: int, key_id: int, width: int, lo: int, hi: int, buckets: int) -> list[Point]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT bucket, n, min_step, min_value, min_time, max_step, max_value, max_time "
            "FROM training_metricrollup WHERE run_id = %s AND key_id = %s AND width = %s "
            "AND bucket BETWEEN %s AND %s ORDER BY bucket",
            [run_id, key_id, width, lo // width, hi // width],
        )
        rows = cur.fetchall()
    merged = merge_buckets(((b * width, Bucket(*rest)) for b, *rest in rows), buckets=buckets, lo=lo, hi=hi + 1)
    # Edge buckets straddle the range: drop their extremes that fall outside it.
    return [p for p in merged if lo <= p[0] <= hi]


def log_tail(*, run_id: int, after_id: int = 0, limit: int = 500) -> list[list[Any]]:
    """Log lines as [id, stream, text, time]: the last `limit`, or those after `after_id`."""
    qs = LogLine.objects.filter(run_id=run_id)
    if after_id:
        rows = list(qs.filter(id__gt=after_id).order_by("id").values_list("id", "stream", "text", "time")[:limit])
    else:
        rows = list(qs.order_by("-id").values_list("id", "stream", "text", "time")[:limit])[::-1]
    return [list(r) for r in rows]


def table_names(*, run: Run) -> list[str]:
    """Names of the tables a run logged ("samples" for the recipes' own)."""
    return sorted(set(RunTable.objects.filter(run=run).values_list("name", flat=True)))


def table_steps(*, run: Run, name: str) -> list[int]:
    """Steps at which the run logged table `name`, in order."""
    return list(RunTable.objects.filter(run=run, name=name).order_by("step").values_list("step", flat=True))


def table_at(*, run: Run, name: str, step: int | None = None) -> RunTable | None:
    """Table `name` at `step` (the latest one when step is None)."""
    qs = RunTable.objects.filter(run=run, name=name)
    return qs.filter(step=step).first() if step is not None else qs.order_by("-step").first()


def config_diff(*, runs: list[Run]) -> list[dict[str, Any]]:
    """Config keys whose values differ between the runs, each with every run's value."""
    keys = sorted({k for r in runs for k in (r.config or {})})
    diff = []
    for k in keys:
        values = [(r.config or {}).get(k) for r in runs]
        if any(v != values[0] for v in values[1:]):
            diff.append({"key": k, "values": values})
    return diff


def dashboard_runs(*, user: Any, limit: int = 8) -> list[Run]:
    """The dashboard's "recent runs" card."""
    return list(visible_runs(user=user).order_by("-created_at", "-id")[:limit])
