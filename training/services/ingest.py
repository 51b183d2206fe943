"""What a run reports: metric batches, log lines, checkpoints. Each metric batch is one read and one write.

Metric points are stored in chunks (see MetricChunk): a batch of 10,000 points becomes ~40 chunk
rows, so PostgreSQL's per-row costs (heap tuple, index entry, WAL record, ~2 µs each) are paid once
per ~320 points instead of per point. The chunk arithmetic runs in numpy, in this process:

1. sort the batch by (key, step) and drop repeats inside it (the first sent wins, as on a re-send);
2. read the chunks the batch touches that already exist (for an append, one partial chunk per key);
3. merge: a point whose step a chunk already holds is dropped (idempotency on (run, key, step));
4. from the new points only, compute rollup buckets and summary deltas, so a re-sent or overlapping
   batch counts nothing twice;
5. write the changed chunks, the rollups and the summaries in one statement.

The run row stays locked (bump_seq) from 2 to the commit, so no other writer of the run can slip in
between the read and the write. SQLite (embedded mode) stores the same chunks and summaries through
the ORM but no rollups: charts there read the chunks directly, which is fine at a laptop's scale.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import psycopg
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from artifacts import services as artifact_services
from artifacts import uris
from artifacts.models import ArtifactKind
from training import events
from training.models import CHUNK_STEPS, Checkpoint, LogLine, MetricChunk, MetricKey, MetricSummary, Run, RunTable
from training.payloads import ColumnBatch, LogBatch, MetricBatch, PayloadError, TableBatch
from training.services.runs import bump_seq

logger = logging.getLogger(__name__)

# Bucket widths (in steps) of the rollups. A chart asks for ~1,000 buckets: a 1,000,000-step series
# reads ~1,000 rows at width 1024; 100,000 steps read ~3,000 at width 32; below ~16,000 steps
# the raw points are few enough to read directly.
ROLLUP_WIDTHS = (32, 1024, 32768)

STEP_DTYPE = np.dtype("<i8")
FLOAT_DTYPE = np.dtype("<f8")

# runs.bump_seq's UPDATE (next event number + the run's row lock, serialising its writers) with
# the batch's key ids in the same round trip.
# The last column counts the batch's names this run already has: when it equals their number (the
# usual batch), the run's key budget needs no further look. Its snapshot may predate a concurrent
# writer of the run (taken before the row lock was granted), so it can only under-count: a short
# count sends the batch through the exact check, which runs after the lock.
_PG_LOCK_RUN = """
UPDATE training_run SET event_seq = event_seq + 1 WHERE id = %(run)s
RETURNING event_seq, ARRAY(SELECT name FROM training_metrickey WHERE name = ANY(%(names)s::text[]) ORDER BY name),
    ARRAY(SELECT id FROM training_metrickey WHERE name = ANY(%(names)s::text[]) ORDER BY name),
    (SELECT count(*) FROM training_metricsummary s JOIN training_metrickey k ON k.id = s.key_id
     WHERE s.run_id = %(run)s AND k.name = ANY(%(names)s::text[]))
"""

# Metric names no run uses any more (their runs were deleted), a bounded slice at a time.
_PRUNE_KEYS = """
DELETE FROM training_metrickey WHERE id IN (
    SELECT k.id FROM training_metrickey k
    WHERE NOT EXISTS (SELECT 1 FROM training_metricsummary s WHERE s.key_id = k.id) LIMIT %s)
"""

_PG_READ_CHUNKS = """
SELECT key_id, chunk, steps, "values", times FROM training_metricchunk
WHERE run_id = %(run)s AND (key_id, chunk) IN (SELECT * FROM unnest(%(keys)s::int[], %(chunks)s::bigint[]))
"""

# One statement writes the chunks, the rollups and the summaries. Two variants of the chunk upsert:
# - append: the batch's points go after the last step of each chunk they touch (a training loop's
#   usual batch). No chunk is read back: the statement itself checks, with `ok`, that every touched
#   chunk ends before the batch's part of it begins, and then concatenates. If one does not, the
#   statement writes nothing, returns false, and the caller takes the merge path.
# - replace: chunks merged in Python (after reading them) are written whole.
# Both run after the run's row lock is held, so `ok` reads what the previous writer committed.
_PG_WRITE_METRICS = """
WITH u AS (
    SELECT * FROM unnest(%(c_key)s::int[], %(c_chunk)s::bigint[], %(c_n)s::int[], %(c_off)s::int[],
                         %(c_first)s::bigint[], %(c_last)s::bigint[])
        AS u(key_id, chunk, n, off, first_step, last_step)
), ok AS (
    SELECT {ok} AS ok
), chunks AS (
    -- The blob holds each chunk's steps, values and times back to back (one bytea parameter,
    -- sent in binary: no per-number text formatting or parsing on either side).
    INSERT INTO training_metricchunk AS c (run_id, key_id, chunk, n, last_step, steps, "values", times)
    SELECT %(run)s, key_id, chunk, n, last_step, substring(%(blob)b FROM off + 1 FOR 8 * n),
           substring(%(blob)b FROM off + 1 + 8 * n FOR 8 * n), substring(%(blob)b FROM off + 1 + 16 * n FOR 8 * n)
    FROM u WHERE (SELECT ok FROM ok) ORDER BY key_id, chunk
    ON CONFLICT (run_id, key_id, chunk) DO UPDATE SET {merge}
), roll AS (
    INSERT INTO training_metricrollup AS r
        (run_id, key_id, width, bucket, n, min_step, min_value, min_time, max_step, max_value, max_time)
    SELECT %(run)s, * FROM unnest(
        %(r_key)s::int[], %(r_width)s::int[], %(r_bucket)s::bigint[], %(r_n)s::int[],
        %(r_min_step)s::bigint[], %(r_min_value)s::float8[], %(r_min_time)s::float8[],
        %(r_max_step)s::bigint[], %(r_max_value)s::float8[], %(r_max_time)s::float8[])
    WHERE (SELECT ok FROM ok)
    ON CONFLICT (run_id, key_id, width, bucket) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        min_step = CASE WHEN EXCLUDED.min_value < r.min_value THEN EXCLUDED.min_step ELSE r.min_step END,
        min_time = CASE WHEN EXCLUDED.min_value < r.min_value THEN EXCLUDED.min_time ELSE r.min_time END,
        min_value = LEAST(r.min_value, EXCLUDED.min_value),
        max_step = CASE WHEN EXCLUDED.max_value > r.max_value THEN EXCLUDED.max_step ELSE r.max_step END,
        max_time = CASE WHEN EXCLUDED.max_value > r.max_value THEN EXCLUDED.max_time ELSE r.max_time END,
        max_value = GREATEST(r.max_value, EXCLUDED.max_value)
), summ AS (
    INSERT INTO training_metricsummary AS s
        (run_id, key_id, n, last_step, last_value, last_time, min_value, max_value)
    SELECT %(run)s, * FROM unnest(
        %(s_key)s::int[], %(s_n)s::bigint[], %(s_last_step)s::bigint[], %(s_last_value)s::float8[],
        %(s_last_time)s::float8[], %(s_min_value)s::float8[], %(s_max_value)s::float8[])
    WHERE (SELECT ok FROM ok)
    ON CONFLICT (run_id, key_id) DO UPDATE SET
        n = s.n + EXCLUDED.n,
        last_value = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_value ELSE s.last_value END,
        last_time = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_time ELSE s.last_time END,
        last_step = GREATEST(s.last_step, EXCLUDED.last_step),
        min_value = LEAST(s.min_value, EXCLUDED.min_value),
        max_value = GREATEST(s.max_value, EXCLUDED.max_value)
)
-- Setting it here saves a round trip; it only matters at the commit that follows.
SELECT ok, set_config('synchronous_commit', %(sync)s, true) FROM ok
"""
_SQL_APPEND = _PG_WRITE_METRICS.format(
    ok="""NOT EXISTS (SELECT FROM u JOIN training_metricchunk c ON c.run_id = %(run)s AND c.key_id = u.key_id
                          AND c.chunk = u.chunk WHERE c.last_step >= u.first_step)""",
    merge="""n = c.n + EXCLUDED.n, last_step = EXCLUDED.last_step, steps = c.steps || EXCLUDED.steps,
        "values" = c."values" || EXCLUDED."values", times = c.times || EXCLUDED.times""",
)
_SQL_REPLACE = _PG_WRITE_METRICS.format(
    ok="true",
    merge="""n = EXCLUDED.n, last_step = EXCLUDED.last_step, steps = EXCLUDED.steps,
        "values" = EXCLUDED."values", times = EXCLUDED.times""",
)

_PG_INSERT_LOGS = """
INSERT INTO training_logline (run_id, stream, seq, text, time)
SELECT %(run)s, * FROM unnest(%(streams)s::text[], %(seqs)s::bigint[], %(texts)s::text[], %(times)s::float8[])
ON CONFLICT DO NOTHING
RETURNING id, stream, text, time
"""


@dataclass(frozen=True, slots=True)
class IngestResult:
    received: int
    written: int
    seq: int


@dataclass(frozen=True, slots=True)
class Points:
    """Columns of points sorted by (key id, step), at most one point per (key, step)."""

    keys: np.ndarray  # int64 key ids
    steps: np.ndarray  # int64
    values: np.ndarray  # float64
    times: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, index: Any) -> Points:
        return Points(self.keys[index], self.steps[index], self.values[index], self.times[index])


@dataclass(frozen=True, slots=True)
class ChunkRow:
    key_id: int
    chunk: int
    points: Points  # this chunk's whole content after the merge, sorted by step


@dataclass(frozen=True, slots=True)
class WritePlan:
    chunks: list[ChunkRow]  # chunks whose content changed
    new: Points  # the points no chunk held before: the only ones rollups and summaries count


def key_ids(names: set[str]) -> dict[str, int]:
    """Ids of metric names, creating the new ones (no process cache: ids must survive a test flush)."""
    found = dict(MetricKey.objects.filter(name__in=names).values_list("name", "id"))
    missing = names - found.keys()
    if missing:
        MetricKey.objects.bulk_create([MetricKey(name=n) for n in sorted(missing)], ignore_conflicts=True)
        found.update(MetricKey.objects.filter(name__in=missing).values_list("name", "id"))
    return found


def sorted_points(*, batch: ColumnBatch) -> tuple[list[str], Points]:
    """The batch sorted by (key, step); of repeated (key, step) the first sent is kept.

    Keys are numbered by their place in the returned sorted names (`with_key_ids` swaps in the
    database ids later): the sort happens before the run is locked, so concurrent batches of
    one run overlap this work instead of queueing for it.
    """
    n = len(batch)
    names = sorted(batch.names)
    rank = {name: i for i, name in enumerate(names)}
    keys = np.array([rank[name] for name in batch.names], dtype=np.int64)[batch.keys]
    steps = batch.steps
    order = np.lexsort((steps, keys))  # stable: among equal (key, step), input order survives
    pts = Points(keys[order], steps[order], batch.values[order], batch.times[order])
    if n > 1:
        first = np.empty(n, dtype=bool)
        first[0] = True
        first[1:] = (pts.keys[1:] != pts.keys[:-1]) | (pts.steps[1:] != pts.steps[:-1])
        if not first.all():
            pts = pts.take(first)
    return names, pts


def with_key_ids(pts: Points, names: list[str], ids: dict[str, int]) -> Points:
    """`pts` with key numbers replaced by database ids (segments stay contiguous: one id per name)."""
    table = np.array([ids[name] for name in names], dtype=np.int64)
    return Points(table[pts.keys], pts.steps, pts.values, pts.times)


def _segments(*columns: np.ndarray) -> np.ndarray:
    """Start indexes of the runs of equal rows in sorted `columns`."""
    change = np.zeros(len(columns[0]), dtype=bool)
    change[0] = True
    for col in columns:
        change[1:] |= col[1:] != col[:-1]
    return np.flatnonzero(change)


def touched_chunks(pts: Points) -> tuple[np.ndarray, np.ndarray]:
    """(key ids, chunk numbers) the points fall in, one entry per chunk."""
    chunks = pts.steps // CHUNK_STEPS
    starts = _segments(pts.keys, chunks)
    return pts.keys[starts], chunks[starts]


def plan_write(*, pts: Points, existing: dict[tuple[int, int], Points]) -> WritePlan:
    """Merge the batch into the chunks that exist; keep only points whose step no chunk holds yet."""
    chunks = pts.steps // CHUNK_STEPS
    starts = _segments(pts.keys, chunks)
    ends = np.append(starts[1:], len(pts))
    is_new = np.ones(len(pts), dtype=bool)
    rows: list[ChunkRow] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        key_id, chunk = int(pts.keys[a]), int(chunks[a])
        part = pts.take(slice(a, b))
        old = existing.get((key_id, chunk))
        if old is not None:
            fresh = ~np.isin(part.steps, old.steps, assume_unique=True)
            is_new[a:b] = fresh
            if not fresh.any():
                continue  # a re-sent chunk: nothing changes
            part = part.take(fresh)
            if part.steps[0] > old.steps[-1]:  # the usual case: appending
                merged = Points(*(np.concatenate((o, p)) for o, p in zip(_cols(old), _cols(part), strict=True)))
            else:
                cat = [np.concatenate((o, p)) for o, p in zip(_cols(old), _cols(part), strict=True)]
                order = np.argsort(cat[1], kind="stable")
                merged = Points(*(c[order] for c in cat))
            part = merged
        rows.append(ChunkRow(key_id, chunk, part))
    return WritePlan(rows, pts if is_new.all() else pts.take(is_new))


def _cols(p: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return p.keys, p.steps, p.values, p.times


@dataclass(frozen=True, slots=True)
class Extremes:
    """Per group: count, and the min and max value with the step and time where each happened."""

    keys: np.ndarray
    groups: np.ndarray
    n: np.ndarray
    min_step: np.ndarray
    min_value: np.ndarray
    min_time: np.ndarray
    max_step: np.ndarray
    max_value: np.ndarray
    max_time: np.ndarray


def _first_where(mask: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Per segment, the first index where mask is true (each segment has one)."""
    idx = np.flatnonzero(mask)
    s = seg[idx]
    keep = np.ones(len(idx), dtype=bool)
    keep[1:] = s[1:] != s[:-1]
    return idx[keep]


def group_extremes(e: Extremes, groups: np.ndarray) -> Extremes:
    """Merge rows (sorted by key, then step) that share (key, group).

    Ties keep the earliest step, like the rollup upsert's comparisons (strict < and >).
    """
    starts = _segments(e.keys, groups)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(e.keys))))
    lo = np.minimum.reduceat(e.min_value, starts)
    hi = np.maximum.reduceat(e.max_value, starts)
    at_lo = _first_where(e.min_value == lo[seg], seg)
    at_hi = _first_where(e.max_value == hi[seg], seg)
    return Extremes(
        e.keys[starts],
        groups[starts],
        np.add.reduceat(e.n, starts),
        e.min_step[at_lo],
        lo,
        e.min_time[at_lo],
        e.max_step[at_hi],
        hi,
        e.max_time[at_hi],
    )


def rollups(pts: Points) -> list[tuple[int, Extremes]]:
    """Rollup buckets of the new points at each width; coarser widths are merged from the finest."""
    one = np.ones(len(pts), dtype=np.int64)
    level = Extremes(pts.keys, pts.steps, one, pts.steps, pts.values, pts.times, pts.steps, pts.values, pts.times)
    out = []
    prev = 1
    for width in ROLLUP_WIDTHS:
        level = group_extremes(level, level.groups * prev // width)
        out.append((width, level))
        prev = width
    return out


def summaries(pts: Points, coarsest: Extremes) -> tuple[Extremes, np.ndarray]:
    """Per key of the new points: count, min, max (as Extremes) and the index of its last point.

    `coarsest` is the widest rollup level of the same points: merging its few rows is cheaper.
    """
    whole = group_extremes(coarsest, np.zeros(len(coarsest.keys), dtype=np.int64))
    last = np.append(_segments(pts.keys)[1:], len(pts)) - 1
    return whole, last


def record_metrics(*, run: Run, batch: MetricBatch | ColumnBatch) -> IngestResult:
    """Store a validated batch idempotently on (run, key, step); announce it after commit.

    Refused whole (PayloadError on `key`) when it would give the run more than RUN_MAX_METRIC_KEYS
    distinct metric names.
    """
    if not len(batch):
        return IngestResult(0, 0, run.event_seq)
    cols = batch.columns() if isinstance(batch, MetricBatch) else batch
    names, pts = sorted_points(batch=cols)
    try:
        return _record_metrics(run=run, cols=cols, names=names, pts=pts)
    except IntegrityError:
        # prune_unused_metric_keys deleted a name between this batch's lookup and its commit (the
        # summary's foreign key is checked at commit): the whole batch rolled back; look up again.
        return _record_metrics(run=run, cols=cols, names=names, pts=pts)


def _record_metrics(*, run: Run, cols: ColumnBatch, names: list[str], pts: Points) -> IngestResult:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            seq, ids, known = _lock_run_pg(run_id=run.id, names=names)
            check_key_budget(run_id=run.id, names=names, known=known)
            written = _write_metrics_pg(run_id=run.id, pts=with_key_ids(pts, names, ids))
        else:
            seq = bump_seq(run_id=run.id)
            check_key_budget(run_id=run.id, names=names)
            ids = key_ids(set(names))
            written = _write_metrics_portable(run=run, pts=with_key_ids(pts, names, ids))
        delta = _live_delta(run_id=run.id, seq=seq, cols=cols)
        transaction.on_commit(lambda: events.broadcast(delta))
    return IngestResult(len(cols), written, seq)


def _live_delta(*, run_id: int, seq: int, cols: ColumnBatch) -> events.RunDelta:
    if len(cols) > events.MAX_LIVE_POINTS_PER_BATCH:
        # A bulk upload: pages re-read these charts (see events.metrics_delta); no per-point work here.
        delta = events.empty_delta(run_id=run_id, seq=seq)
        delta["resync"] = sorted(set(cols.names))
        return delta
    return events.metrics_delta(
        run_id=run_id,
        seq=seq,
        keys=[cols.names[i] for i in cols.keys.tolist()],
        steps=cols.steps.tolist(),
        values=cols.values.tolist(),
        times=cols.times.tolist(),
    )


def array_literal(numbers: Any) -> str:
    """A PostgreSQL array literal of ints or floats (a list or a numpy array).

    Why text: psycopg adapts a 10,000-element Python list in ~7 ms per column; orjson writes the
    same numbers (shortest round-trip form, so floats stay exact) in well under a millisecond.
    """
    return "{" + orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode() + "}"


def _unpack(steps: bytes, values: bytes, times: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.frombuffer(steps, dtype=STEP_DTYPE),
        np.frombuffer(values, dtype=FLOAT_DTYPE),
        np.frombuffer(times, dtype=FLOAT_DTYPE),
    )


def _existing(rows: Any) -> dict[tuple[int, int], Points]:
    out = {}
    for key_id, chunk, steps, values, times in rows:
        s, v, t = _unpack(steps, values, times)
        out[(int(key_id), int(chunk))] = Points(np.full(len(s), key_id, dtype=np.int64), s, v, t)
    return out


def _pg_cursor() -> psycopg.Cursor[Any]:
    """A server-side-binding cursor on Django's connection (same transaction).

    Why not Django's cursor: it binds on the client, which would hex-escape the chunk blob into the
    SQL text; a server-side binding cursor sends it as one binary parameter, and psycopg prepares
    the statement after a few executions (no re-planning of the big CTE per batch).
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _lock_run_pg(*, run_id: int, names: list[str]) -> tuple[int, dict[str, int], int]:
    """Lock the run and take its next event number; the ids of `names` that exist, and how many of
    them the run already has (a lower bound, see _PG_LOCK_RUN)."""
    with _pg_cursor() as cur:
        # Pipelined, the transaction's BEGIN travels with this statement: one round trip, not two.
        with cur.connection.pipeline():
            cur.execute(_PG_LOCK_RUN, {"run": run_id, "names": names})
        row = cur.fetchone()
    if row is None:
        raise Run.DoesNotExist(run_id)
    ids = dict(zip(row[1], row[2], strict=True))
    if len(ids) < len(names):
        ids = key_ids(set(names))
    return int(row[0]), ids, int(row[3])


def check_key_budget(*, run_id: int, names: list[str], known: int = -1) -> None:
    """Refuse a batch that would give the run more than RUN_MAX_METRIC_KEYS distinct metric names.

    Why a limit: every name becomes a chart on the run page, a column choice in lists and a row in
    the run's summaries; one script logging a new name per step (100,000 of them) made pages of
    megabytes. `known` (names of the batch the run is known to have) skips the look when it is all of them.
    Call with the run locked, so that concurrent batches of one run count each other.
    """
    if known >= len(names):
        return
    limit = int(settings.RUN_MAX_METRIC_KEYS)
    rule = f"a run may have at most {limit} distinct metric keys (RUN_MAX_METRIC_KEYS)"
    if len(names) > limit:
        raise PayloadError("key", f"{rule}; this batch alone has {len(names)}: nothing was written")
    have = set(MetricSummary.objects.filter(run_id=run_id, key__name__in=names).values_list("key__name", flat=True))
    new = [n for n in names if n not in have]
    if not new:
        return
    total = MetricSummary.objects.filter(run_id=run_id).count()
    if total + len(new) > limit:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        raise PayloadError(
            "key", f"{rule}; run #{run_id} has {total} and this batch adds {len(new)} ({shown}): nothing was written"
        )


def prune_unused_metric_keys(*, chunk: int = 5000) -> int:
    """Delete metric names that no run uses any more (their runs were deleted); returns how many.

    A batch that looked a name up just before it is deleted fails at commit and is retried by
    record_metrics; a name that gains a user while this runs makes this delete fail at commit, and
    the rest waits for the next run of the task.
    """
    deleted = 0
    while True:
        try:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(_PRUNE_KEYS, [chunk])
                n = int(cur.rowcount)
        except IntegrityError:
            logger.info("metric key prune raced an ingest; the rest waits for the next run")
            return deleted
        deleted += n
        if n < chunk:
            return deleted


def _write_metrics_pg(*, run_id: int, pts: Points) -> int:
    sync = "on" if getattr(settings, "METRICS_SYNCHRONOUS_COMMIT", False) else "off"
    # The commit's WAL flush is ~1-10 ms, a large share of a batch's time. Without waiting for it, a
    # crash of PostgreSQL itself (not of the web tier) may lose the last few hundred ms of
    # acknowledged points; nothing is ever corrupted, and logs, status and checkpoints keep
    # waiting. Set METRICS_SYNCHRONOUS_COMMIT = True to wait.
    with _pg_cursor() as cur:
        cur.execute(_SQL_APPEND, {**_write_params(run_id=run_id, plan=as_appends(pts)), "sync": sync})
        if _fetch_ok(cur):
            return len(pts)
        keys, chunks = touched_chunks(pts)
        cur.execute(
            _PG_READ_CHUNKS,
            {"run": run_id, "keys": array_literal(keys), "chunks": array_literal(chunks)},
            binary=True,
        )
        plan = plan_write(pts=pts, existing=_existing(cur.fetchall()))
        if not plan.chunks:
            return 0
        cur.execute(_SQL_REPLACE, {**_write_params(run_id=run_id, plan=plan), "sync": sync})
        _fetch_ok(cur)
    return len(plan.new)


def _fetch_ok(cur: psycopg.Cursor[Any]) -> bool:
    row = cur.fetchone()
    return bool(row and row[0])


def as_appends(pts: Points) -> WritePlan:
    """The batch as one append per touched chunk, every point new (what the append statement checks)."""
    keys, chunks = touched_chunks(pts)
    starts = _segments(pts.keys, pts.steps // CHUNK_STEPS)
    ends = np.append(starts[1:], len(pts))
    rows = [
        ChunkRow(int(k), int(c), pts.take(slice(a, b)))
        for k, c, a, b in zip(keys.tolist(), chunks.tolist(), starts.tolist(), ends.tolist(), strict=True)
    ]
    return WritePlan(rows, pts)


def _write_params(*, run_id: int, plan: WritePlan) -> dict[str, Any]:
    parts: list[bytes] = []
    offsets, size = [], 0
    for row in plan.chunks:
        p = row.points
        offsets.append(size)
        parts += [p.steps.astype(STEP_DTYPE).tobytes(), p.values.astype(FLOAT_DTYPE).tobytes()]
        parts.append(p.times.astype(FLOAT_DTYPE).tobytes())
        size += 24 * len(p)
    params: dict[str, Any] = {
        "run": run_id,
        "blob": b"".join(parts),
        "c_key": array_literal([r.key_id for r in plan.chunks]),
        "c_chunk": array_literal([r.chunk for r in plan.chunks]),
        "c_n": array_literal([len(r.points) for r in plan.chunks]),
        "c_off": array_literal(offsets),
        "c_first": array_literal([int(r.points.steps[0]) for r in plan.chunks]),
        "c_last": array_literal([int(r.points.steps[-1]) for r in plan.chunks]),
    }
    levels = rollups(plan.new)
    cat = {f: np.concatenate([getattr(e, f) for _, e in levels]) for f in Extremes.__slots__}
    params["r_width"] = array_literal(np.concatenate([np.full(len(e.keys), w) for w, e in levels]))
    params["r_key"] = array_literal(cat["keys"])
    params["r_bucket"] = array_literal(cat["groups"])
    for f in ("n", "min_step", "min_value", "min_time", "max_step", "max_value", "max_time"):
        params[f"r_{f}"] = array_literal(cat[f])
    whole, last = summaries(plan.new, levels[-1][1])
    params.update(
        s_key=array_literal(whole.keys),
        s_n=array_literal(whole.n),
        s_last_step=array_literal(plan.new.steps[last]),
        s_last_value=array_literal(plan.new.values[last]),
        s_last_time=array_literal(plan.new.times[last]),
        s_min_value=array_literal(whole.min_value),
        s_max_value=array_literal(whole.max_value),
    )
    return params


def _write_metrics_portable(*, run: Run, pts: Points) -> int:
    keys, chunks = touched_chunks(pts)
    wanted = set(zip(keys.tolist(), chunks.tolist(), strict=True))
    rows = (
        (c.key_id, c.chunk, bytes(c.steps), bytes(c.values), bytes(c.times))
        for c in MetricChunk.objects.filter(run=run, key_id__in=set(keys.tolist()), chunk__in=set(chunks.tolist()))
        if (c.key_id, c.chunk) in wanted
    )
    plan = plan_write(pts=pts, existing=_existing(rows))
    if not plan.chunks:
        return 0
    for row in plan.chunks:
        p = row.points
        MetricChunk.objects.update_or_create(
            run=run,
            key_id=row.key_id,
            chunk=row.chunk,
            defaults={
                "n": len(p),
                "last_step": int(p.steps[-1]),
                "steps": p.steps.astype(STEP_DTYPE).tobytes(),
                "values": p.values.astype(FLOAT_DTYPE).tobytes(),
                "times": p.times.astype(FLOAT_DTYPE).tobytes(),
            },
        )
    whole, last = summaries(plan.new, rollups(plan.new)[-1][1])
    for i, key_id in enumerate(whole.keys.tolist()):
        j = int(last[i])
        step, value, t = int(plan.new.steps[j]), float(plan.new.values[j]), float(plan.new.times[j])
        lo, hi, n = float(whole.min_value[i]), float(whole.max_value[i]), int(whole.n[i])
        summary = MetricSummary.objects.filter(run=run, key_id=key_id).first()
        if summary is None:
            MetricSummary.objects.create(
                run=run,
                key_id=key_id,
                n=n,
                last_step=step,
                last_value=value,
                last_time=t,
                min_value=lo,
                max_value=hi,
            )
            continue
        summary.n += n
        if step >= summary.last_step:
            summary.last_step, summary.last_value, summary.last_time = step, value, t
        summary.min_value, summary.max_value = min(summary.min_value, lo), max(summary.max_value, hi)
        summary.save()
    return len(plan.new)


def record_logs(*, run_id: int, batch: LogBatch) -> int:
    """Append log lines idempotently on (run, stream, seq); announce the new ones after commit."""
    if not batch.seqs:
        return 0
    with transaction.atomic():
        seq = bump_seq(run_id=run_id)
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute(
                    _PG_INSERT_LOGS,
                    {
                        "run": run_id,
                        "streams": batch.streams,
                        "seqs": batch.seqs,
                        "texts": batch.texts,
                        "times": batch.times,
                    },
                )
                rows = [list(r) for r in cur.fetchall()]
        else:
            existing = set(LogLine.objects.filter(run_id=run_id, seq__in=batch.seqs).values_list("stream", "seq"))
            new = [
                LogLine(run_id=run_id, stream=st, seq=q, text=tx, time=t)
                for st, q, tx, t in zip(batch.streams, batch.seqs, batch.texts, batch.times, strict=True)
                if (st, q) not in existing
            ]
            created = LogLine.objects.bulk_create(new)
            rows = [[ln.id, ln.stream, ln.text, ln.time] for ln in created]
        rows.sort(key=lambda r: r[0])
        delta = events.empty_delta(run_id=run_id, seq=seq)
        delta["logs"] = rows[-events.MAX_LIVE_LOG_LINES :]
        delta["logs_truncated"] = len(rows) > events.MAX_LIVE_LOG_LINES
        transaction.on_commit(lambda: events.broadcast(delta))
    return len(rows)


def record_checkpoint(*, run: Run, step: int, path: str) -> Checkpoint:
    """Record a checkpoint the run wrote; its path must lie inside the run's own artifact location.

    A run token is the run's credential, not its owner's: a checkpoint pointing anywhere else (another
    run's folder, /etc) would hand that place to whoever can see this run (issue 12.3).
    """
    try:
        uri = artifact_services.checkpoint_uri(run=run, value=path)
    except (uris.BadUri, artifact_services.OutsideRunLocation) as exc:
        raise PayloadError("path", str(exc)) from None
    # The files are complete when the run reports them (the engine uploads first): measured once here for the run
    # page's checkpoint list.
    try:
        size = artifact_services.stored_size(uri)
    except Exception:  # display only: a store hiccup must not refuse the report (the page measures it later)
        logger.warning("run %s: could not measure checkpoint %s", run.id, uri, exc_info=True)
        size = 0
    with transaction.atomic():
        checkpoint, _ = Checkpoint.objects.get_or_create(run=run, step=step, defaults={"path": path})
        artifact_services.register_artifact(
            owner=run.owner, kind=ArtifactKind.CHECKPOINT, uri=str(uri), run=run, size=size
        )
    return checkpoint


# A run stores at most this many tables: one every 50 steps for 500,000 steps. Past it the API answers 409.
MAX_TABLES_PER_RUN = 10_000


class TableLimit(Exception):
    """The run already stores MAX_TABLES_PER_RUN tables."""


def record_table(*, run: Run, batch: TableBatch) -> bool:
    """Store a table idempotently on (run, name, step); False when that table was already there (a re-send)."""
    if RunTable.objects.filter(run=run, name=batch.name, step=batch.step).exists():
        return False
    if RunTable.objects.filter(run=run).count() >= MAX_TABLES_PER_RUN:
        raise TableLimit(f"this run already stores {MAX_TABLES_PER_RUN} tables; log them less often")
    # get_or_create: a concurrent re-send meets the unique constraint and reads the first one back.
    _, created = RunTable.objects.get_or_create(
        run=run, name=batch.name, step=batch.step, defaults={"columns": batch.columns, "rows": batch.rows}
    )
    return created


def lines_batch(*, stream: str, first_seq: int, texts: list[str]) -> LogBatch:
    """A LogBatch for consecutive lines of one stream (the supervisor's captured output)."""
    now = time.time()
    return LogBatch(
        seqs=list(range(first_seq, first_seq + len(texts))),
        streams=[stream] * len(texts),
        texts=[t[:10_000].replace("\x00", "") for t in texts],
        times=[now] * len(texts),
    )
