"""What a run reports: metric batches, log lines, checkpoints. Each batch is written in one statement.

On PostgreSQL a metric batch is one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING whose
RETURNING rows (only the points that were new) feed, in the same statement, the rollup and summary
upserts. A re-sent batch therefore inserts nothing and counts nothing twice. SQLite (embedded mode)
takes a portable path: bulk insert ignoring conflicts, then summaries recomputed from the points;
charts there read points directly (no rollups), which is fine at a laptop's scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Max, Min

from training import events
from training.models import Checkpoint, LogLine, MetricKey, MetricPoint, MetricSummary, Run
from training.payloads import LogBatch, MetricBatch
from training.services.runs import bump_seq

# Bucket widths (in steps) of the rollups. A chart asks for ~1,000 buckets: a 1,000,000-step series
# reads ~1,000 rows at width 1024; 100,000 steps read ~3,000 at width 32; below ~32,000 steps
# the raw points are few enough to read directly.
ROLLUP_WIDTHS = (32, 1024, 32768)

_PG_INSERT_METRICS = """
WITH ins AS (
    INSERT INTO training_metricpoint (run_id, key_id, step, value, wall_time)
    SELECT %(run)s, * FROM unnest(%(keys)s::int[], %(steps)s::bigint[], %(values)s::float8[], %(times)s::float8[])
    {on_conflict}
    RETURNING key_id, step, value, wall_time
), fine AS (
    -- min(ARRAY[value, step, time]) is the extreme together with where it happened (ties: lower step).
    SELECT key_id, step / {w0} AS bucket, count(*) AS n,
           min(ARRAY[value, step::float8, wall_time]) AS lo, max(ARRAY[value, -step::float8, wall_time]) AS hi,
           max(ARRAY[step::float8, value, wall_time]) AS tail
    FROM ins GROUP BY key_id, step / {w0}
), agg AS (
    -- Coarser widths from the finest buckets, not from the points: a few hundred rows instead of 10,000s.
    SELECT key_id, {w0} AS width, bucket, n, lo, hi FROM fine
    UNION ALL
    SELECT key_id, w.width, bucket * {w0} / w.width, sum(n), min(lo), max(hi)
    FROM fine CROSS JOIN unnest(%(coarse)s::int[]) AS w(width)
    GROUP BY key_id, w.width, bucket * {w0} / w.width
), roll AS (
    INSERT INTO training_metricrollup AS r
        (run_id, key_id, width, bucket, n, min_step, min_value, min_time, max_step, max_value, max_time)
    SELECT %(run)s, key_id, width, bucket, n, lo[2]::bigint, lo[1], lo[3], (-hi[2])::bigint, hi[1], hi[3]
    FROM agg ORDER BY key_id, width, bucket
    ON CONFLICT (run_id, key_id, width, bucket) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        min_step = CASE WHEN EXCLUDED.min_value < r.min_value THEN EXCLUDED.min_step ELSE r.min_step END,
        min_time = CASE WHEN EXCLUDED.min_value < r.min_value THEN EXCLUDED.min_time ELSE r.min_time END,
        min_value = LEAST(r.min_value, EXCLUDED.min_value),
        max_step = CASE WHEN EXCLUDED.max_value > r.max_value THEN EXCLUDED.max_step ELSE r.max_step END,
        max_time = CASE WHEN EXCLUDED.max_value > r.max_value THEN EXCLUDED.max_time ELSE r.max_time END,
        max_value = GREATEST(r.max_value, EXCLUDED.max_value)
), last AS (
    SELECT key_id, sum(n) AS n, (min(lo))[1] AS min_value, (max(hi))[1] AS max_value, max(tail) AS tail
    FROM fine GROUP BY key_id
), summ AS (
    INSERT INTO training_metricsummary AS s
        (run_id, key_id, n, last_step, last_value, last_time, min_value, max_value)
    SELECT %(run)s, key_id, n, tail[1]::bigint, tail[2], tail[3], min_value, max_value
    FROM last ORDER BY key_id
    ON CONFLICT (run_id, key_id) DO UPDATE SET
        n = s.n + EXCLUDED.n,
        last_value = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_value ELSE s.last_value END,
        last_time = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_time ELSE s.last_time END,
        last_step = GREATEST(s.last_step, EXCLUDED.last_step),
        min_value = LEAST(s.min_value, EXCLUDED.min_value),
        max_value = GREATEST(s.max_value, EXCLUDED.max_value)
)
SELECT coalesce(sum(n), 0) FROM last
"""

_SQL_FAST = _PG_INSERT_METRICS.format(on_conflict="", w0=ROLLUP_WIDTHS[0])
_SQL_IDEMPOTENT = _PG_INSERT_METRICS.format(on_conflict="ON CONFLICT DO NOTHING", w0=ROLLUP_WIDTHS[0])

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


def key_ids(names: set[str]) -> dict[str, int]:
    """Ids of metric names, creating the new ones (no process cache: ids must survive a test flush)."""
    found = dict(MetricKey.objects.filter(name__in=names).values_list("name", "id"))
    missing = names - found.keys()
    if missing:
        MetricKey.objects.bulk_create([MetricKey(name=n) for n in sorted(missing)], ignore_conflicts=True)
        found.update(MetricKey.objects.filter(name__in=missing).values_list("name", "id"))
    return found


def record_metrics(*, run: Run, batch: MetricBatch) -> IngestResult:
    """Store a validated batch idempotently on (run, key, step); announce it after commit."""
    if not len(batch):
        return IngestResult(0, 0, run.event_seq)
    ids = key_ids(set(batch.keys))
    key_col = [ids[k] for k in batch.keys]
    with transaction.atomic():
        seq = bump_seq(run_id=run.id)
        if connection.vendor == "postgresql":
            written = _insert_metrics_pg(run_id=run.id, key_col=key_col, batch=batch)
        else:
            written = _insert_metrics_portable(run=run, key_col=key_col, batch=batch)
        delta = events.metrics_delta(
            run_id=run.id, seq=seq, keys=batch.keys, steps=batch.steps, values=batch.values, times=batch.times
        )
        transaction.on_commit(lambda: events.broadcast(delta))
    return IngestResult(len(batch), written, seq)


def array_literal(numbers: list[int] | list[float]) -> str:
    """A PostgreSQL array literal of ints or floats.

    Why text: psycopg adapts a 10,000-element Python list in ~7 ms per column; orjson writes the
    same numbers (shortest round-trip form, so floats stay exact) in ~0.3 ms and PostgreSQL parses
    the literal in ~1 ms.
    """
    return "{" + orjson.dumps(numbers)[1:-1].decode() + "}"


def _insert_metrics_pg(*, run_id: int, key_col: list[int], batch: MetricBatch) -> int:
    """Plain INSERT first, ON CONFLICT DO NOTHING only if that fails.

    Why: ON CONFLICT's speculative insertion costs ~70% more per row, and conflicts only happen
    when a client re-sends a batch whose answer it lost. The run row is locked (bump_seq), so no
    concurrent writer of this run can slip in between the two tries.
    """
    params = {
        "run": run_id,
        "keys": array_literal(key_col),
        "steps": array_literal(batch.steps),
        "values": array_literal(batch.values),
        "times": array_literal(batch.times),
        "coarse": list(ROLLUP_WIDTHS[1:]),
    }
    with connection.cursor() as cur:
        if not getattr(settings, "METRICS_SYNCHRONOUS_COMMIT", False):
            # The commit's WAL flush is ~10 ms on an ordinary disk, a third of a 5,000-point batch.
            # Without waiting for it, a crash of PostgreSQL itself (not of the web tier) may lose the
            # last few hundred ms of acknowledged points; nothing is ever corrupted, and logs,
            # status and checkpoints keep waiting. Set METRICS_SYNCHRONOUS_COMMIT = True to wait.
            cur.execute("SET LOCAL synchronous_commit TO off")
        try:
            with transaction.atomic():  # a savepoint: the failed try leaves nothing behind
                cur.execute(_SQL_FAST, params)
        except IntegrityError:
            cur.execute(_SQL_IDEMPOTENT, params)
        return int(cur.fetchone()[0])


def _insert_metrics_portable(*, run: Run, key_col: list[int], batch: MetricBatch) -> int:
    before = MetricPoint.objects.filter(run=run).count()
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, key_id=k, step=s, value=v, wall_time=t)
            for k, s, v, t in zip(key_col, batch.steps, batch.values, batch.times, strict=True)
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    written = MetricPoint.objects.filter(run=run).count() - before
    for key_id in set(key_col):
        points = MetricPoint.objects.filter(run=run, key_id=key_id)
        agg = points.aggregate(n=Count("step"), lo=Min("value"), hi=Max("value"))
        last = points.order_by("-step").values_list("step", "value", "wall_time").first()
        MetricSummary.objects.filter(run=run, key_id=key_id).delete()
        MetricSummary.objects.create(
            run=run,
            key_id=key_id,
            n=agg["n"],
            last_step=last[0],
            last_value=last[1],
            last_time=last[2],
            min_value=agg["lo"],
            max_value=agg["hi"],
        )
    return written


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
    checkpoint, _ = Checkpoint.objects.get_or_create(run=run, step=step, defaults={"path": path})
    return checkpoint


def lines_batch(*, stream: str, first_seq: int, texts: list[str]) -> LogBatch:
    """A LogBatch for consecutive lines of one stream (the supervisor's captured output)."""
    now = time.time()
    return LogBatch(
        seqs=list(range(first_seq, first_seq + len(texts))),
        streams=[stream] * len(texts),
        texts=[t[:10_000].replace("\x00", "") for t in texts],
        times=[now] * len(texts),
    )
