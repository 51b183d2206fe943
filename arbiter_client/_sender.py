"""The thread that delivers a run's reports: batched, each request retried on its own, none blocking the rest.

What the training loop hands over (metric rows, log lines, small calls such as a checkpoint) waits
in buffers; the thread cuts it into requests and sends up to `parallel` at once. Each request then
meets one of three fates (see _http.py for how failures are told apart):
- delivered;
- the server was unreachable: every request waits (nothing can get through), and the thread
  probes with one request at a time, backing off, until the server answers again;
- refused (4xx), or a 5xx that repeats past `max_server_errors` attempts (429/503 "busy" get
  `max_busy_errors`): that request alone is given up, counted and reported; the others go on.
So one stuck call cannot hold back what was logged after it, and `finish()` can say exactly what
arrived, what was given up and why, and what was still waiting when time ran out.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._columns import Block, MetricBuffer, blocks_body
from ._http import ArbiterError, Connection, ServerError, TransientError, Unreachable, encode_body

LogRecord = tuple[int, str, str, float]  # seq, stream, text, wall time
MAX_LINES = 10_000  # the server's limit per request
MAX_FAILURES_KEPT = 20


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random.

    Why jitter: after a server restart, every client that waited on the same schedule would
    otherwise reconnect in the same instant. Why half fixed: full jitter can pick ~0 and hammer
    a server that is still down.
    """
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


@dataclass(eq=False)
class Request:
    """One HTTP call the client owes the server, with its own retry state."""

    seq: int
    path: str
    body: bytes
    compressed: bool
    label: str  # for messages: "metrics (10,000 points)", "checkpoint at step 49"
    points: int = 0
    lines: int = 0
    barrier: bool = False  # sent only after everything queued before it is settled (the final status)
    optional: bool = False  # a 404/405 means an older server without this endpoint: give it up, keep reporting
    attempts: int = 0
    not_before: float = 0.0

    def __lt__(self, other: Request) -> bool:
        return self.seq < other.seq


@dataclass
class Report:
    """What became of everything handed to the sender."""

    delivered_points: int = 0
    failed_points: int = 0  # refused by the server, or given up after repeated server errors
    dropped_points: int = 0  # overflowed the buffer while the server was unreachable
    delivered_lines: int = 0
    failed_lines: int = 0
    delivered_calls: int = 0
    failed_calls: int = 0
    attempts_failed: int = 0  # requests that had to be tried again
    failures: list[str] = field(default_factory=list)  # why, for the first MAX_FAILURES_KEPT given up


class Sender(threading.Thread):
    """Owns the buffers; the training loop only appends under a lock and never waits on the network.

    Memory stays bounded while the server is unreachable: past `max_buffered` points the oldest
    unsent metric requests are dropped (and counted), so a long outage cannot exhaust the trainer's RAM.
    """

    def __init__(
        self,
        conn: Connection,
        run_id: int,
        *,
        flush_interval: float = 0.002,
        max_batch: int = 50_000,
        max_buffered: int = 2_000_000,
        system_interval: float = 0.0,
        system_sampler: Callable[[], dict[str, float]] | None = None,
        parallel: int = 2,
        heartbeat_interval: float = 0.0,
        max_server_errors: int = 4,
        max_busy_errors: int = 12,
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
        self.heartbeat_interval = heartbeat_interval
        self.max_server_errors = max(1, max_server_errors)
        self.max_busy_errors = max(1, max_busy_errors)
        self.report = Report()
        self._executor: ThreadPoolExecutor | None = None
        # One connection per request in flight (a kept-alive HTTP/1.1 connection carries one at a time).
        self._conns: list[Connection] = [conn, *(conn.clone() for _ in range(self.parallel - 1))]
        self._free_conns: list[Connection] = list(reversed(self._conns))
        self._inflight = 0  # requests in flight
        # The producers take the plain lock (a C call); the condition wraps the same lock for waiting.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._metrics = MetricBuffer()
        self._logs: list[LogRecord] = []
        self._queue: list[Request] = []  # waiting to be sent, in seq order
        self._seq = 0
        self._inflight_points = self._inflight_lines = self._inflight_calls = 0
        self._new_since: float | None = None  # when the buffers last went from empty to not
        self._flush_requested = False
        self._stopping = False
        self._disabled: str | None = None  # why reporting stopped (the server refused the run's token)
        self._outage_attempt = 0  # > 0 while the server is unreachable
        self._outage_until = 0.0
        self._next_system = time.monotonic() + system_interval if system_interval > 0 else float("inf")
        self._system_seq = 0
        self._last_contact = time.monotonic()
        self._warned: dict[str, float] = {}

    # --- producer side (training thread) -------------------------------------------------
    def add_row(self, keys: tuple[str, ...], step: int, t: float, values: tuple[Any, ...]) -> None:
        """One `run.log` call's row (the hot path: ~1 µs). Raises TypeError for a value that is no number."""
        with self._lock:
            if self._disabled is not None:
                self.report.failed_points += len(values)
                return
            buffer = self._metrics
            block = buffer.blocks.get(keys)
            if block is None:
                buffer.add_row(keys, step, t, values)  # new key set (and the checked, rolled-back path)
            else:
                before = len(block.values)
                try:
                    block.values.extend(values)
                except (TypeError, ValueError, OverflowError):
                    del block.values[before:]
                    raise
                block.steps.append(step)
                block.times.append(t)
                buffer.points += len(values)
            if self._new_since is None:
                self._new_since = time.monotonic()
                self._cond.notify()
            elif buffer.points >= self.max_batch:
                self._cond.notify()

    def add_block(self, block: Block) -> None:
        with self._lock:
            if self._disabled is not None:
                self.report.failed_points += block.points
                return
            if self._new_since is None:
                self._new_since = time.monotonic()
            self._metrics.add_block(block)
            self._cond.notify()

    def add_log(self, record: LogRecord) -> None:
        with self._lock:
            if self._disabled is not None:
                self.report.failed_lines += 1
                return
            if self._new_since is None:
                self._new_since = time.monotonic()
                self._cond.notify()
            self._logs.append(record)

    def add_call(
        self, path: str, payload: dict[str, Any], *, label: str, barrier: bool = False, optional: bool = False
    ) -> None:
        """A small request (checkpoint, status, table) sent after what was logged before it was handed over.

        `optional`: refused with 404/405 (a server too old to know the endpoint), it is given up alone instead
        of stopping the run's reporting (what a 404 means for the run's own endpoints).
        """
        with self._cond:
            if self._disabled is not None:
                self.report.failed_calls += 1
                self._keep_failure(f"{label}: not sent ({self._disabled})")
                return
            self._seal(force=True)  # what came before goes into the queue ahead of it
            self._enqueue(Request(0, path, encode_body(payload), True, label, barrier=barrier, optional=optional))
            self._cond.notify()

    def pending(self) -> dict[str, int]:
        """What is neither delivered nor given up yet: buffered, queued or in flight."""
        with self._cond:
            return self._pending_locked()

    def _pending_locked(self) -> dict[str, int]:
        queued = self._queue
        return {
            "points": self._metrics.points + sum(r.points for r in queued) + self._inflight_points,
            "lines": len(self._logs) + sum(r.lines for r in queued) + self._inflight_lines,
            "calls": sum(1 for r in queued if not (r.points or r.lines)) + self._inflight_calls,
        }

    def _idle_locked(self) -> bool:
        return not (self._metrics.points or self._logs or self._queue) and not (
            self._inflight_points or self._inflight_lines or self._inflight_calls
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything handed over so far is delivered or given up; False if time ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            try:
                while not self._idle_locked():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(timeout=0.05 if remaining is None else min(0.05, remaining))
                return True
            finally:
                self._flush_requested = False

    def stop(self, timeout: float | None = 30.0) -> bool:
        settled = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        for conn in self._conns:
            conn.close()
        return settled

    # --- consumer side (this thread) -----------------------------------------------------
    def run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_work()
                if self._stopping:
                    return
                self._seal(force=self._flush_requested)
                picked = self._pick(time.monotonic())
                for req in picked:
                    self._inflight += 1
                    self._inflight_points += req.points
                    self._inflight_lines += req.lines
                    self._inflight_calls += not (req.points or req.lines)
                conns = [self._free_conns.pop() for _ in picked]
            self._sample_system()
            self._heartbeat()
            if self.parallel == 1:
                for req, conn in zip(picked, conns, strict=True):
                    self._send_and_settle(req, conn)
            else:
                # Each request settles on its own as soon as it is answered, and its slot takes the
                # next one at once: `parallel` requests stay in flight while there is work, so the
                # client's encoding, the network and the server's work on two batches overlap.
                for req, conn in zip(picked, conns, strict=True):
                    try:
                        self._pool().submit(self._send_and_settle, req, conn)
                    except RuntimeError:
                        # The interpreter is exiting (finish() from atexit): concurrent.futures takes
                        # no new work then, so this thread sends it itself, one at a time.
                        self._send_and_settle(req, conn)

    def _send_and_settle(self, req: Request, conn: Connection) -> None:
        outcome = self._send(req, conn)
        with self._cond:
            self._free_conns.append(conn)
            self._inflight -= 1
            self._inflight_points -= req.points
            self._inflight_lines -= req.lines
            self._inflight_calls -= not (req.points or req.lines)
            self._settle(req, outcome)
            self._cond.notify_all()

    def _wait_for_work(self) -> None:
        """Return when something should be done now: seal and send, retry, sample, heartbeat, or stop."""
        while not self._stopping:
            now = time.monotonic()
            timers = [float("inf")]
            if self._disabled is None:
                timers.append(self._next_system)
                if self.heartbeat_interval > 0:
                    timers.append(max(self._last_contact + self.heartbeat_interval, self._outage_until))
                if min(timers) <= now:
                    return
                if self._sealable(now):
                    return
                ready = self._ready_at()
                if ready <= now:
                    return
                timers.append(ready)
                if self._new_since is not None and not self._queue and self._inflight < self.parallel:
                    # (with a queue, or every slot busy, sealing waits for a request to settle)
                    timers.append(self._new_since + self.flush_interval)
            self._cond.wait(timeout=max(0.0, min(min(timers) - now, 1.0)))

    def _sealable(self, now: float) -> bool:
        """New data should become requests now: a full batch, a flush, or the linger is over and nothing waits.

        Why linger (`flush_interval`, 2 ms by default): one step's several log() calls, microseconds
        apart, then share a request; at a high rate points pile up while a request is in flight, so
        batches grow by themselves up to `max_batch`. While requests wait (an outage, retries) new
        data stays in the buffer until a batch is full, instead of becoming many tiny requests; the
        same while every one of the `parallel` slots has a request in flight (what arrives meanwhile
        becomes one bigger request when a slot frees, not a small one waiting in line).
        """
        if not (self._metrics.points or self._logs):
            return False
        if self._flush_requested or self._metrics.points >= self.max_batch or len(self._logs) >= MAX_LINES:
            return True
        lingered = self._new_since is not None and now - self._new_since >= self.flush_interval
        return lingered and not self._queue and self._inflight < self.parallel

    def _ready_at(self) -> float:
        """When `_pick` will next find something to send (the same rules, read without taking)."""
        if self._inflight >= self._slots():
            return float("inf")  # a settling request wakes the thread
        first = float("inf")
        for i, req in enumerate(self._queue):
            if req.barrier:
                if i == 0 and not self._inflight:
                    first = req.not_before
                break
            first = min(first, req.not_before)
        return max(first, self._outage_until)

    def _slots(self) -> int:
        """How many requests may be in flight now: `parallel`, or one probe while the server is unreachable."""
        return 1 if self._outage_attempt else self.parallel

    def _seal(self, *, force: bool) -> None:
        """Turn buffered data into requests (at most max_batch points or MAX_LINES lines each)."""
        now = time.monotonic()
        if not force and not self._sealable(now):
            return
        self._new_since = None
        parts = [part for block in self._metrics.take() for part in block.split(self.max_batch)]
        group: list[Block] = []
        size = 0
        for part in parts:
            if group and size + part.points > self.max_batch:
                self._enqueue_metrics(group, size)
                group, size = [], 0
            group.append(part)
            size += part.points
        if group:
            self._enqueue_metrics(group, size)
        while self._logs:
            lines, self._logs = self._logs[:MAX_LINES], self._logs[MAX_LINES:]
            body = {"lines": [{"seq": q, "stream": st, "text": tx, "time": t} for q, st, tx, t in lines]}
            self._enqueue(
                Request(
                    0,
                    f"/api/runs/{self.run_id}/logs/",
                    encode_body(body),
                    True,
                    f"{len(lines)} log lines",
                    lines=len(lines),
                )
            )
        self._bound_memory()

    def _enqueue_metrics(self, blocks: list[Block], points: int) -> None:
        # Base64 of packed arrays does not shrink under gzip (float mantissas are noise): sent as is.
        body = encode_body(blocks_body(blocks), compress=False)
        label = f"metrics ({points:,} points)"
        self._enqueue(Request(0, f"/api/runs/{self.run_id}/metrics/", body, False, label, points=points))

    def _enqueue(self, req: Request) -> None:
        self._seq += 1
        req.seq = self._seq
        self._queue.append(req)  # seq only grows: appending keeps the order

    def _bound_memory(self) -> None:
        queued = sum(r.points for r in self._queue)
        if queued <= self.max_buffered:
            return
        for req in list(self._queue):
            if queued <= self.max_buffered:
                break
            if req.points and not req.attempts:
                self._queue.remove(req)
                queued -= req.points
                self.report.dropped_points += req.points
        self._warn("overflow", f"server unreachable for long: oldest points dropped ({self.report.dropped_points:,})")

    def _pick(self, now: float) -> list[Request]:
        """Requests due now for the free slots, in order; a barrier only alone (nothing in flight) and first;
        one probe during an outage."""
        free = self._slots() - self._inflight
        if now < self._outage_until or not self._queue or free <= 0:
            return []
        picked: list[Request] = []
        for i, req in enumerate(self._queue):
            if req.barrier:
                if i == 0 and not self._inflight and req.not_before <= now:
                    picked.append(req)
                break
            if req.not_before <= now:
                picked.append(req)
                if len(picked) == free:
                    break
        for req in picked:
            self._queue.remove(req)
        return picked

    def _send(self, req: Request, conn: Connection) -> Exception | None:
        try:
            conn.exchange("POST", req.path, body=req.body, compressed=req.compressed)
        except Exception as exc:  # classified in _settle
            return exc
        return None

    def _settle(self, req: Request, outcome: Exception | None) -> None:
        now = time.monotonic()
        if outcome is None:
            self._last_contact = now
            if self._outage_attempt:
                self._warn("back", "server reachable again; delivering what waited", force=True)
            self._outage_attempt, self._outage_until = 0, 0.0
            self.report.delivered_points += req.points
            self.report.delivered_lines += req.lines
            self.report.delivered_calls += not (req.points or req.lines)
            return
        self.report.attempts_failed += 1
        if isinstance(outcome, Unreachable):
            # Nothing can get through: this request keeps its place, and everything pauses.
            self._outage_attempt += 1
            self._outage_until = now + backoff_delay(self._outage_attempt - 1)
            bisect.insort(self._queue, req)
            if self._outage_attempt == 1:
                waiting = self._pending_locked()
                self._warn(
                    "outage",
                    f"{outcome}; keeping {waiting['points']:,} points and {waiting['lines']:,} log lines "
                    "to send when it answers",
                    force=True,
                )
            return
        if isinstance(outcome, ServerError):
            req.attempts += 1
            limit = self.max_busy_errors if outcome.busy else self.max_server_errors
            if req.attempts >= limit:
                self._give_up(req, f"{outcome} (after {req.attempts} attempts)")
                return
            req.not_before = now + (outcome.retry_after or backoff_delay(req.attempts - 1))
            bisect.insort(self._queue, req)
            kind = "server busy" if outcome.busy else "server error"
            self._warn(f"{kind}:{outcome.status}", f"{kind} on {req.label} ({outcome}); retrying")
            return
        if req.optional and isinstance(outcome, ArbiterError) and outcome.status in {404, 405}:
            self._give_up(req, f"the server does not know {req.path} ({outcome})")
            return
        if isinstance(outcome, ArbiterError) and outcome.status in {401, 403, 404}:
            self._disable(f"the server refused run {self.run_id}'s token: {outcome}", req)
            return
        if isinstance(outcome, ArbiterError | TransientError):
            self._give_up(req, str(outcome))
            return
        self._give_up(req, f"{type(outcome).__name__}: {outcome}")

    def _give_up(self, req: Request, why: str) -> None:
        self.report.failed_points += req.points
        self.report.failed_lines += req.lines
        self.report.failed_calls += not (req.points or req.lines)
        self._keep_failure(f"{req.label}: {why}")
        _warn(f"run {self.run_id}: {req.label} not delivered: {why}")

    def _keep_failure(self, message: str) -> None:
        if len(self.report.failures) < MAX_FAILURES_KEPT:
            self.report.failures.append(message)

    def _disable(self, why: str, req: Request | None) -> None:
        """The run's token is refused: nothing will ever be accepted. Give up everything, say it once."""
        self._disabled = why
        _warn(f"run {self.run_id}: reporting stopped, {why}")
        leftovers = [*([req] if req else []), *self._queue]
        self._queue = []
        self.report.failed_points += self._metrics.points + sum(r.points for r in leftovers)
        self.report.failed_lines += len(self._logs) + sum(r.lines for r in leftovers)
        self.report.failed_calls += sum(1 for r in leftovers if not (r.points or r.lines))
        self._metrics.take()
        self._logs = []
        self._new_since = None
        self._keep_failure(why)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.parallel, thread_name_prefix=f"arbiter-send-{self.run_id}")
        return self._executor

    def _sample_system(self) -> None:
        if self.system_sampler is None or time.monotonic() < self._next_system:
            return
        self._next_system = time.monotonic() + self.system_interval
        if self._disabled is not None:
            return
        try:
            sample = self.system_sampler()
        except Exception:
            return
        sample["seq"] = self._system_seq
        sample["time"] = time.time()
        self._system_seq += 1
        with self._cond:
            self._enqueue(
                Request(
                    0, f"/api/runs/{self.run_id}/system/", encode_body({"samples": [sample]}), True, "system sample"
                )
            )

    def _heartbeat(self) -> None:
        """Tell the server this script is alive when nothing else has for `heartbeat_interval` seconds.

        A run created by a script (`arbiter_client.init`) is marked lost when the server hears
        nothing for RUN_HEARTBEAT_TIMEOUT seconds; the answer says that timeout, and the interval
        shrinks to a quarter of it. Not retried: the next beat is the retry.
        """
        if self.heartbeat_interval <= 0 or self._disabled is not None:
            return
        if self._inflight:
            # A request in flight is itself a sign of life (the server counts every report), and the beat would
            # wait for its connection while a free slot and new data wait behind it.
            return
        now = time.monotonic()
        if now - self._last_contact < self.heartbeat_interval or now < self._outage_until:
            return
        self._last_contact = now  # also when it fails: beat at the interval, not in a loop
        try:
            answer = self.conn.request("POST", f"/api/runs/{self.run_id}/heartbeat/", {})
        except ArbiterError as exc:
            if exc.status in {401, 403, 404}:
                with self._cond:
                    self._disable(f"the server refused run {self.run_id}'s token: {exc}", None)
            return
        except TransientError:
            return
        timeout = answer.get("heartbeat_timeout_s") if isinstance(answer, dict) else None
        if isinstance(timeout, int | float) and timeout > 0:
            self.heartbeat_interval = min(self.heartbeat_interval, max(1.0, timeout / 4))

    def _warn(self, kind: str, message: str, *, force: bool = False) -> None:
        """Say it once per kind per 30 s (a flapping server must not flood the training log)."""
        now = time.monotonic()
        if not force and now - self._warned.get(kind, -1e9) < 30:
            return
        self._warned[kind] = now
        _warn(f"run {self.run_id}: {message}")


def _warn(message: str) -> None:
    # stderr may be a dead pipe (the supervisor that read it is gone) or closed: a warning must never
    # kill the sender thread, which would leave finish() waiting out its whole timeout.
    with contextlib.suppress(OSError, ValueError):
        print(f"arbiter_client: {message}", file=sys.stderr, flush=True)  # noqa: T201 - the SDK's only voice
