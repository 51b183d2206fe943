"""Pure parts: payload validation, downsampling, coalescing, back-off (no database)."""

from __future__ import annotations

import random

import pytest

from arbiter_client._sender import backoff_delay
from training import events
from training.downsample import Bucket, merge_buckets, minmax_points
from training.payloads import PayloadError, parse_logs, parse_metrics


def _points(n: int) -> list[tuple[float, float, float]]:
    rng = random.Random(3)
    return [(i, rng.gauss(0, 1), 1000.0 + i) for i in range(n)]


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"key": "", "step": 1, "value": 1.0}, "points[1].key"),
        ({"key": "loss", "step": -1, "value": 1.0}, "points[1].step"),
        ({"key": "loss", "step": True, "value": 1.0}, "points[1].step"),
        ({"key": "loss", "step": 1, "value": "1.0"}, "points[1].value"),
        ({"key": "loss", "step": 1, "value": float("nan")}, "points[1].value"),
        ({"key": "loss", "step": 1, "value": 1.0, "time": "now"}, "points[1].time"),
    ],
)
def test_bad_point_is_refused_with_its_field(point: dict, field: str) -> None:
    body = {"points": [{"key": "ok", "step": 0, "value": 0.5}, point]}
    with pytest.raises(PayloadError) as err:
        parse_metrics(body, now=0.0)
    assert err.value.field == field


def test_missing_points_list_names_the_field() -> None:
    with pytest.raises(PayloadError) as err:
        parse_metrics({"point": []}, now=0.0)
    assert err.value.field == "points"


def test_good_batch_becomes_columns_with_default_time() -> None:
    batch = parse_metrics({"points": [{"key": "a/b", "step": 3, "value": 2}]}, now=7.0)
    assert (batch.keys, batch.steps, batch.values, batch.times) == (["a/b"], [3], [2.0], [7.0])


def test_log_line_with_unknown_stream_is_refused() -> None:
    with pytest.raises(PayloadError) as err:
        parse_logs({"lines": [{"seq": 0, "stream": "stdin", "text": "x"}]}, now=0.0)
    assert err.value.field == "lines[0].stream"


def test_minmax_keeps_every_bucket_extreme_and_bounds_size() -> None:
    pts = _points(100_000)
    out = minmax_points(pts, buckets=500, lo=0, hi=100_000)
    assert len(out) <= 1000
    assert [p[0] for p in out] == sorted(p[0] for p in out)
    width = 100_000 / 500
    for b in range(500):
        chunk = [p for p in pts if int(p[0] // width) == b]
        kept = {p[0] for p in out}
        assert min(chunk, key=lambda p: (p[1], p[0]))[0] in kept
        assert max(chunk, key=lambda p: (p[1], -p[0]))[0] in kept
    assert min(p[1] for p in out) == min(p[1] for p in pts)
    assert max(p[1] for p in out) == max(p[1] for p in pts)


def test_short_series_is_returned_unchanged() -> None:
    pts = _points(300)
    assert minmax_points(pts, buckets=500, lo=0, hi=300) == pts


def test_merging_rollup_buckets_equals_downsampling_the_raw_points() -> None:
    pts = _points(64_000)
    rollups = []
    for start in range(0, 64_000, 32):
        chunk = pts[start : start + 32]
        lo = min(chunk, key=lambda p: (p[1], p[0]))
        hi = max(chunk, key=lambda p: (p[1], -p[0]))
        rollups.append((start, Bucket(len(chunk), lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])))
    assert merge_buckets(rollups, buckets=1000, lo=0, hi=64_000) == minmax_points(pts, buckets=1000, lo=0, hi=64_000)


def test_coalescer_bounds_what_waits_for_a_slow_socket() -> None:
    c = events.Coalescer()
    for seq in range(1, 2001):
        delta = events.metrics_delta(
            run_id=1, seq=seq, keys=["loss", "acc"], steps=[seq, seq], values=[1.0, 2.0], times=[0.0, 0.0]
        )
        delta["logs"] = [[seq, "stdout", f"line {seq}", 0.0]]
        c.add(delta)
    merged = c.take()
    assert merged is not None and not c
    assert (merged["first_seq"], merged["seq"]) == (1, 2000)
    # 2000 points per key exceed the live cap: the page is told to re-read those charts instead.
    assert sorted(merged["resync"]) == ["acc", "loss"] and merged["metrics"] == {}
    assert len(merged["logs"]) == events.MAX_LIVE_LOG_LINES and merged["logs_truncated"]
    assert merged["logs"][-1][0] == 2000


def test_coalescer_merges_small_deltas_in_order() -> None:
    c = events.Coalescer()
    for seq in (1, 2, 3):
        c.add(events.metrics_delta(run_id=1, seq=seq, keys=["loss"], steps=[seq], values=[0.1 * seq], times=[0.0]))
    merged = c.take()
    assert merged["metrics"]["loss"] == [[1, 0.1, 0.0], [2, 0.2, 0.0], [3, pytest.approx(0.3), 0.0]]
    assert (merged["first_seq"], merged["seq"]) == (1, 3)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        for _ in range(20):
            assert ceiling / 2 <= backoff_delay(attempt) <= ceiling
