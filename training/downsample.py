"""Screen-resolution downsampling of metric series (pure functions, no database).

Min/max per bucket (the "M4" idea without first/last): for each of N equal-width buckets over
the visible x range we keep the point with the smallest and the point with the largest value,
in x order. Drawn as a line at N ≈ pixel width this is visually identical to the full series:
every spike survives, which LTTB (an area heuristic) does not promise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Point = tuple[float, float, float]  # x (step), value, wall time


@dataclass(frozen=True, slots=True)
class Bucket:
    """The extremes of one bucket; steps and times locate each extreme on either x axis."""

    n: int
    min_step: int
    min_value: float
    min_time: float
    max_step: int
    max_value: float
    max_time: float


def bucket_points(bucket: Bucket) -> list[Point]:
    """The one or two points that draw a bucket, in step order."""
    lo = (bucket.min_step, bucket.min_value, bucket.min_time)
    hi = (bucket.max_step, bucket.max_value, bucket.max_time)
    if bucket.min_step == bucket.max_step:
        return [lo]
    return [lo, hi] if bucket.min_step < bucket.max_step else [hi, lo]


def minmax_points(points: Sequence[Point], *, buckets: int, lo: float, hi: float) -> list[Point]:
    """Downsample points sorted by step to at most 2 x `buckets` points over [lo, hi].

    Series already shorter than 2 x buckets come back unchanged (no point is ever invented).
    """
    if len(points) <= 2 * buckets:
        return list(points)
    width = (hi - lo) / buckets if hi > lo else 1.0
    merged: dict[int, Bucket] = {}
    for step, value, t in points:
        b = min(buckets - 1, int((step - lo) // width))
        merged[b] = _merge(merged.get(b), Bucket(1, int(step), value, t, int(step), value, t))
    return [p for b in sorted(merged) for p in bucket_points(merged[b])]


def merge_buckets(rows: Iterable[tuple[int, Bucket]], *, buckets: int, lo: float, hi: float) -> list[Point]:
    """Combine precomputed rollup buckets (keyed by their first step) into `buckets` screen buckets."""
    width = (hi - lo) / buckets if hi > lo else 1.0
    merged: dict[int, Bucket] = {}
    for start, bucket in rows:
        b = min(buckets - 1, max(0, int((start - lo) // width)))
        merged[b] = _merge(merged.get(b), bucket)
    return [p for b in sorted(merged) for p in bucket_points(merged[b])]


def _merge(a: Bucket | None, b: Bucket) -> Bucket:
    if a is None:
        return b
    # Ties keep the earlier step so the result does not depend on arrival order.
    lo_from_a = a.min_value < b.min_value or (a.min_value == b.min_value and a.min_step <= b.min_step)
    hi_from_a = a.max_value > b.max_value or (a.max_value == b.max_value and a.max_step <= b.max_step)
    lo, hi = (a if lo_from_a else b), (a if hi_from_a else b)
    return Bucket(a.n + b.n, lo.min_step, lo.min_value, lo.min_time, hi.max_step, hi.max_value, hi.max_time)
