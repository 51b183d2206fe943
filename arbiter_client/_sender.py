"""The background thread that batches, compresses and delivers a run's reports, retrying while the server is away."""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._http import ArbiterError, Connection, TransientError

MetricPoint = tuple[str, int, float, float]  # key, step, value, wall time (unix seconds)
LogRecord = tuple[int, str, str, float]  # seq, stream, text, wall time


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random.

    Why jitter: after a server restart, every client that waited on the same schedule would
    otherwise reconnect in the same instant. Why half fixed: full jitter can pick ~0 and hammer
    a server that is still down.
    """
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


def series_body(points: list[MetricPoint]) -> dict[str, Any]:
    """The columnar metrics body: one {key, steps, values, times} per key, in the order keys first appear.

    Why columnar: a key name is written once per batch instead of once per point, and the JSON is
    flat lists of numbers, ~3x cheaper to encode here and to parse on the server than an object per point.
    """
    columns: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for key, step, value, t in points:
        col = columns.get(key)
        if col is None:
            col = columns[key] = ([], [], [])
        col[0].append(step)
        col[1].append(value)
        col[2].append(t)
    return {"series": [{"key": k, "steps": s, "values": v, "times": t} for k, (s, v, t) in columns.items()]}


class Sender(threading.Thread):
    """Owns the buffers; the training loop only appends under a lock and never waits on the network.

    Memory stays bounded while the server is unreachable: past `max_buffered` points the oldest
    unsent points are dropped (and counted), so a long outage cannot exhaust the trainer's RAM.
    """

    def __init__(
        self,
        conn: Connection,
        run_id: int,
        *,
        flush_interval: float = 0.002,
        max_batch: int = 10000,
        max_buffered: int = 2_000_000,
        system_interval: float = 0.0,
        system_sampler: Callable[[], dict[str, float]] | None = None,
        parallel: int = 2,
    ) -> None:
        super().__init__(name=f"arbiter-sender-{run_id}", daemon=True)
        self.conn = conn
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self.system_interval = system_interval
        self.system_sampler = system_sampler
        self.parallel = max(1, parallel)
        self._executor: ThreadPoolExecutor | None = None
        self._conns: list[Connection] = [conn]
        self._cond = threading.Condition()
        self._metrics: deque[MetricPoint] = deque()
        self._logs: deque[LogRecord] = deque()
        self._calls: deque[tuple[str, dict[str, Any]]] = deque()
        self._inflight = 0  # items taken from the buffers but not yet delivered
        self._flush_requested = False
        self._stopping = False
        self._disabled = False  # set when the server refuses our token: retrying cannot help
        self._next_system = time.monotonic() + system_interval if system_interval > 0 else float("inf")
        self._system_seq = 0
        self.dropped_points = 0
        self.delivered_points = 0
        self.attempts_failed = 0

    # --- producer side (training thread) -------------------------------------------------
    def add_metrics(self, points: list[MetricPoint]) -> None:
        with self._cond:
            if self._disabled:
                return
            was_empty = not self._metrics
            self._metrics.extend(points)
            overflow = len(self._metrics) - self.max_buffered
            for _ in range(max(0, overflow)):
                self._metrics.popleft()
                self.dropped_points += 1
            # Wake the sender for the first point (it lingers, then sends) and for a full batch.
            if was_empty or len(self._metrics) >= self.max_batch:
                self._cond.notify_all()

    def add_log(self, record: LogRecord) -> None:
        with self._cond:
            if not self._disabled:
                self._logs.append(record)
                if len(self._logs) == 1:
                    self._cond.notify_all()

    def add_call(self, path: str, payload: dict[str, Any]) -> None:
        """A small ordered request (checkpoint, status) sent after the points logged before it."""
        with self._cond:
            if not self._disabled:
                self._calls.append((path, payload))
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._metrics) + len(self._logs) + len(self._calls) + self._inflight

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything buffered so far is delivered; False if the timeout came first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while not self._disabled and (self._metrics or self._logs or self._calls or self._inflight):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(timeout=0.05 if remaining is None else min(0.05, remaining))
            self._flush_requested = False
            return True

    def stop(self, timeout: float | None = 30.0) -> bool:
        delivered = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        for conn in self._conns:
            conn.close()
        return delivered

    # --- consumer side (this thread) -----------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._metrics or self._logs or self._calls or self._flush_requested)

    def run(self) -> None:
        """Send as soon as there is something, after a short linger.

        Why not a fixed flush period: at a low rate the linger (`flush_interval`, default 2 ms) is
        the whole delay from `log()` to the dashboard; at a high rate, points pile up while a request
        is in flight, so batches grow by themselves up to `max_batch`. 2 ms is enough for one
        step's several log() calls, made microseconds apart, to share a request.
        """
        while True:
            with self._cond:
                if not self._has_work() and not self._stopping:
                    self._cond.wait(timeout=min(1.0, max(0.0, self._next_system - time.monotonic())))
                if self._stopping:
                    return
                has_work = self._has_work()
                urgent = self._flush_requested or len(self._metrics) >= self.max_batch
            self._sample_system()
            if has_work:
                if not urgent:  # let one step's log() calls share a request; a flush cuts it short
                    with self._cond:
                        self._cond.wait_for(
                            lambda: self._flush_requested or self._stopping or len(self._metrics) >= self.max_batch,
                            timeout=self.flush_interval,
                        )
                self._drain()

    def _sample_system(self) -> None:
        if self.system_sampler is None or time.monotonic() < self._next_system:
            return
        self._next_system = time.monotonic() + self.system_interval
        try:
            sample = self.system_sampler()
        except Exception:
            return
        sample["seq"] = self._system_seq
        sample["time"] = time.time()
        self._system_seq += 1
        self.add_call(f"/api/runs/{self.run_id}/system/", {"samples": [sample]})

    def _drain(self) -> None:
        while not self._disabled:
            with self._cond:
                # Up to `parallel` full batches go out together: while the server writes one, it
                # parses the next. Below one batch's worth this is a single request, as before.
                batches: list[list[MetricPoint]] = []
                while self._metrics and len(batches) < self.parallel:
                    batches.append([self._metrics.popleft() for _ in range(min(self.max_batch, len(self._metrics)))])
                logs = [self._logs.popleft() for _ in range(min(self.max_batch, len(self._logs)))]
                call = self._calls.popleft() if (self._calls and not batches and not logs) else None
                self._inflight = sum(map(len, batches)) + len(logs) + (call is not None)
            if not (batches or logs or call):
                return
            if len(batches) > 1:
                list(self._pool().map(self._send_points, batches, self._conns[: len(batches)]))
            elif batches:
                self._send_points(batches[0], self.conn)
            if logs:
                body = {"lines": [{"seq": q, "stream": st, "text": tx, "time": t} for q, st, tx, t in logs]}
                self._deliver(f"/api/runs/{self.run_id}/logs/", body)
            if call:
                self._deliver(*call)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.parallel, thread_name_prefix=f"arbiter-send-{self.run_id}")
            self._conns = [self.conn, *(self.conn.clone() for _ in range(self.parallel - 1))]
        return self._executor

    def _send_points(self, points: list[MetricPoint], conn: Connection) -> None:
        if self._deliver(f"/api/runs/{self.run_id}/metrics/", series_body(points), conn=conn):
            with self._cond:
                self.delivered_points += len(points)

    def _deliver(self, path: str, body: dict[str, Any], *, conn: Connection | None = None) -> bool:
        """Send one batch until it is accepted or refused for good.

        A retried batch is the same batch: the server keys points on (run, key, step) and log
        lines on (run, stream, seq), so a re-send after a lost answer writes nothing twice.
        """
        attempt = 0
        while True:
            try:
                (conn or self.conn).request("POST", path, body)
                return True
            except TransientError as exc:
                self.attempts_failed += 1
                if attempt == 0:
                    _warn(f"server unreachable, will retry: {exc}")
                wake_at = time.monotonic() + backoff_delay(attempt)
                with self._cond:
                    # Producers notify this condition too: keep waiting until the back-off is over.
                    while not self._stopping and (left := wake_at - time.monotonic()) > 0:
                        self._cond.wait(timeout=left)
                    if self._stopping:
                        return False
                attempt += 1
            except ArbiterError as exc:
                if exc.status in {401, 403, 404}:
                    _warn(f"run {self.run_id} refused ({exc}); reporting disabled")
                    with self._cond:
                        self._disabled = True
                        self._metrics.clear()
                        self._logs.clear()
                        self._calls.clear()
                        self._cond.notify_all()
                else:
                    _warn(f"batch refused and dropped: {exc}")
                return False


def _warn(message: str) -> None:
    # stderr may be a dead pipe (the supervisor that read it is gone) or closed: a warning must never
    # kill the sender thread, which would leave finish() waiting out its whole timeout.
    with contextlib.suppress(OSError, ValueError):
        print(f"arbiter_client: {message}", file=sys.stderr, flush=True)  # noqa: T201 - the SDK's only voice
