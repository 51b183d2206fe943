"""Live events of a run: typed payloads, the group name, broadcast after commit, and per-socket coalescing.

The database is the record; these events are hints that let an open page append without
re-reading. A page that misses one (full channel, reconnect, a gap in `seq`) re-reads its backlog.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, NotRequired, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

MAX_LIVE_POINTS_PER_KEY = 500  # a bigger batch is announced as "resync": the page re-reads that chart
MAX_LIVE_LOG_LINES = 300
MAX_LIVE_POINTS_PER_BATCH = 2000

PointRow = list[float]  # [step, value, wall_time]
LogRow = list[Any]  # [id, stream, text, wall_time]


class StatusInfo(TypedDict):
    status: str
    exit_code: int | None
    started_at: str | None
    finished_at: str | None


class RunDelta(TypedDict):
    """One message on the socket: everything new since the previous one."""

    kind: str  # always "delta"
    run: int
    seq: int
    first_seq: int  # == seq unless several events were coalesced into this message
    metrics: dict[str, list[PointRow]]
    resync: list[str]  # keys whose new points were too many to send: re-read them over HTTP
    logs: list[LogRow]
    logs_truncated: bool
    status: NotRequired[StatusInfo]


class RunEventMessage(TypedDict):
    type: str  # "run.event" → RunConsumer.run_event
    payload: RunDelta


def run_group(run_id: int) -> str:
    return f"run.{run_id}"


def empty_delta(*, run_id: int, seq: int) -> RunDelta:
    return {
        "kind": "delta",
        "run": run_id,
        "seq": seq,
        "first_seq": seq,
        "metrics": {},
        "resync": [],
        "logs": [],
        "logs_truncated": False,
    }


def metrics_delta(
    *, run_id: int, seq: int, keys: list[str], steps: list[int], values: list[float], times: list[float]
) -> RunDelta:
    delta = empty_delta(run_id=run_id, seq=seq)
    if len(steps) > MAX_LIVE_POINTS_PER_BATCH:
        # A bulk upload (a script catching up, a benchmark): tell pages to re-read rather than
        # building and shipping thousands of rows per batch.
        delta["resync"] = sorted(set(keys))
        return delta
    by_key: dict[str, list[PointRow]] = {}
    for k, s, v, t in zip(keys, steps, values, times, strict=True):
        by_key.setdefault(k, []).append([s, v, t])
    for key, rows in by_key.items():
        if len(rows) > MAX_LIVE_POINTS_PER_KEY:
            delta["resync"].append(key)
        else:
            delta["metrics"][key] = rows
    return delta


def broadcast(delta: RunDelta) -> None:
    """Send to the run's group; never raises (the data is already committed, the socket is a hint)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message: RunEventMessage = {"type": "run.event", "payload": delta}
    try:
        async_to_sync(layer.group_send)(run_group(delta["run"]), message)
    except Exception:  # a Redis hiccup must not fail an ingest that has committed
        logger.warning("broadcast to run %s failed", delta["run"], exc_info=True)


class Coalescer:
    """Merges the deltas waiting for one slow socket into one bounded message.

    Whatever the rate of events and however slow the browser, what waits is at most
    MAX_LIVE_POINTS_PER_KEY points per key and MAX_LIVE_LOG_LINES lines; beyond that a key becomes
    "resync" and old log lines are dropped with `logs_truncated`, both of which the page repairs
    by re-reading over HTTP.
    """

    def __init__(self) -> None:
        self._pending: RunDelta | None = None
        self._logs: deque[LogRow] = deque(maxlen=MAX_LIVE_LOG_LINES)

    def __bool__(self) -> bool:
        return self._pending is not None

    def add(self, delta: RunDelta) -> None:
        if self._pending is None:
            self._pending = {**delta, "metrics": {}, "resync": list(delta["resync"]), "logs": []}
            self._logs.clear()
        p = self._pending
        p["seq"] = max(p["seq"], delta["seq"])
        p["first_seq"] = min(p["first_seq"], delta["first_seq"])
        for key, rows in delta["metrics"].items():
            if key in p["resync"]:
                continue
            merged = p["metrics"].setdefault(key, [])
            merged.extend(rows)
            if len(merged) > MAX_LIVE_POINTS_PER_KEY:
                del p["metrics"][key]
                p["resync"].append(key)
        for key in delta["resync"]:
            p["metrics"].pop(key, None)
            if key not in p["resync"]:
                p["resync"].append(key)
        if len(self._logs) + len(delta["logs"]) > MAX_LIVE_LOG_LINES:
            p["logs_truncated"] = True
        self._logs.extend(delta["logs"])
        p["logs_truncated"] = p["logs_truncated"] or delta["logs_truncated"]
        if "status" in delta:
            p["status"] = delta["status"]

    def take(self) -> RunDelta | None:
        p, self._pending = self._pending, None
        if p is not None:
            p["logs"] = list(self._logs)
            self._logs.clear()
        return p
