"""The Run handle a training script logs to: buffered, non-blocking, flushed at exit."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import weakref
from array import array
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from ._columns import MAX_STEP, Block, valid_key
from ._http import Connection
from ._sender import Report, Sender, _warn
from ._system import make_sampler

_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_uncaught_exception = False


class Run:
    """One run on an Arbiter server. Create it with `arbiter_client.init()` or `attach()`.

    `owns_status`: a run created by `init()` reports its own end (succeeded/failed) and keeps a
    heartbeat (the server marks it lost when the heartbeat stops); a run the platform launched
    (`attach()`) leaves both to its supervisor, which sees the real process and exit code.
    """

    def __init__(
        self,
        *,
        url: str,
        run_id: int,
        token: str,
        owns_status: bool,
        page_url: str | None = None,
        flush_interval: float | None = None,
        system_interval: float | None = None,
        max_batch: int | None = None,
        heartbeat_interval: float | None = None,
        api_key: str | None = None,
    ) -> None:
        self.id = run_id
        self.url = page_url
        self.owns_status = owns_status
        self._server = url
        self._api_key = api_key
        self._step = -1
        self._log_seq = 0
        self._lock = threading.Lock()
        self._finished = False
        self._keysets: dict[tuple[Any, ...], bool] = {}  # key set → all names valid (checked once)
        if system_interval is None:
            system_interval = float(os.environ.get("ARBITER_SYSTEM_INTERVAL", "15"))
        if heartbeat_interval is None:
            heartbeat_interval = float(os.environ.get("ARBITER_HEARTBEAT_INTERVAL", "15")) if owns_status else 0.0
        self._sender = Sender(
            Connection(url, token),
            run_id,
            flush_interval=flush_interval or float(os.environ.get("ARBITER_FLUSH_INTERVAL", "0.002")),
            max_batch=max_batch or int(os.environ.get("ARBITER_MAX_BATCH", "50000")),
            system_interval=system_interval,
            system_sampler=make_sampler() if system_interval > 0 else None,
            heartbeat_interval=heartbeat_interval,
        )
        self._sender.start()
        _live_runs.add(self)

    # --- the wandb-shaped surface --------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metric values at `step` (the next step after the last one if omitted).

        Values may be Python, numpy or torch scalars. Non-finite values (a diverging loss) cannot
        be charted: each becomes a log line instead, so the divergence is still visible on the run
        page. A name the server would refuse is skipped with a warning (once per name).
        """
        now = time.time()
        with self._lock:
            if step is None:
                step = self._step + 1
            elif type(step) is not int:
                step = _as_step(step)
            if step > self._step:
                self._step = step
        keys = tuple(metrics)
        values = tuple(metrics.values())
        valid = self._keysets.get(keys)
        if valid is None:
            valid = self._keysets[keys] = self._check_keys(keys)
        # The fast path: every name valid, every value a finite real number. A float sum of finite
        # values is finite unless it overflows, so one C-level sum checks the whole row.
        if valid and 0 <= step < MAX_STEP:
            try:
                if math.isfinite(sum(values)):
                    self._sender.add_row(keys, step, now, values)
                    return
            except (TypeError, ValueError, OverflowError):
                pass
        self._log_slow(metrics, step, now)

    def _log_slow(self, metrics: Mapping[str, Any], step: int, now: float) -> None:
        """Value by value: convert what can be converted, say what cannot."""
        if not 0 <= step < MAX_STEP:
            _warn(f"step {step} is out of range [0, 2**62); metrics skipped")
            return
        keys: list[str] = []
        values: list[float] = []
        for key, value in metrics.items():
            if not valid_key(key):
                continue  # warned once in _check_keys
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                _warn(f"metric {key!r} at step {step} is not a number ({type(value).__name__}); skipped")
                continue
            if not math.isfinite(number):
                self.log_text(f"metric {key} is {number} at step {step}", stream="client")
                continue
            keys.append(key)
            values.append(number)
        if keys:
            self._sender.add_row(tuple(keys), step, now, tuple(values))

    def _check_keys(self, keys: tuple[Any, ...]) -> bool:
        bad = [k for k in keys if not valid_key(k)]
        for key in bad:
            _warn(f"metric name {key!r} skipped: use 1-200 letters, digits, spaces or _.:/@%+-")
        return not bad

    def log_many(
        self,
        metrics: Mapping[str, Sequence[Any]],
        *,
        steps: Sequence[int],
        times: Sequence[float] | None = None,
    ) -> None:
        """Record whole arrays at once: `metrics[key][i]` is the value of `key` at `steps[i]`.

        For logging from arrays (a replayed history, a vectorised evaluation): lists, `array`s or
        numpy arrays, each as long as `steps`. `times` (unix seconds, one per step) default to now.
        Rows with a non-finite value in any key are sent without that key's value (a log line says
        how many were skipped). Raises ValueError for mismatched lengths or bad names/steps.
        """
        n = len(steps)
        bad = [k for k in metrics if not valid_key(k)]
        if bad:
            raise ValueError(f"metric names must be 1-200 letters, digits, spaces or _.:/@%+-: {bad[:5]}")
        if any(len(col) != n for col in metrics.values()):
            raise ValueError(f"every metric array must be as long as steps ({n})")
        if times is not None and len(times) != n:
            raise ValueError(f"times must be as long as steps ({n})")
        if not n or not metrics:
            return
        step_col = array("q", _ints(steps))
        if min(step_col) < 0 or max(step_col) >= MAX_STEP:
            raise ValueError("steps must be integers in [0, 2**62)")
        time_col = array("d", times) if times is not None else array("d", [time.time()]) * n
        with self._lock:
            self._step = max(self._step, max(step_col))
        for key, col in metrics.items():
            # One block per key: no interleaving of columns into rows in Python; a block's values
            # are then exactly this column.
            values = _floats(col)
            finite = math.isfinite(sum(values))
            block = Block((key,))
            if finite:
                block.steps, block.times, block.values = step_col, time_col, values
            else:
                keep = [i for i, v in enumerate(values) if math.isfinite(v)]
                self.log_text(f"metric {key}: {n - len(keep)} non-finite values skipped", stream="client")
                block.steps = array("q", (step_col[i] for i in keep))
                block.times = array("d", (time_col[i] for i in keep))
                block.values = array("d", (values[i] for i in keep))
            if block.points:
                self._sender.add_block(block)

    def log_text(self, text: str, *, stream: str = "client") -> None:
        """Append a line to the run's log."""
        with self._lock:
            seq = self._log_seq
            self._log_seq += 1
        self._sender.add_log((seq, stream, str(text), time.time()))

    def log_checkpoint(self, step: int, path: str) -> None:
        """Tell the platform a checkpoint exists (so the run can be resumed from it)."""
        self._sender.add_call(
            f"/api/runs/{self.id}/checkpoints/",
            {"step": int(step), "path": str(path)},
            label=f"checkpoint at step {step}",
        )

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        """Record a small table at `step` (prompts, completions, rewards), shown on the run page like W&B Tables.

        Cells are strings or numbers; a table is at most 256 rows x 32 columns. Keyed on (name, step):
        a re-sent table changes nothing.
        """
        body = {"name": str(name), "step": int(step), "columns": [str(c) for c in columns], "rows": rows}
        self._sender.add_call(
            f"/api/runs/{self.id}/tables/", body, label=f"table {name!r} at step {step}", optional=True
        )

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until everything logged so far is delivered or given up; False on timeout."""
        return self._sender.flush(timeout)

    def finish(self, exit_code: int = 0, *, timeout: float | None = None) -> bool:
        """Deliver what is buffered, report the end (for runs this script created), stop the thread.

        Returns True when everything arrived. Otherwise a warning says what was given up (and why)
        and what was still waiting when `timeout` ran out; `run.report` has the numbers.
        """
        if self._finished:
            return self._all_delivered()
        self._finished = True
        # The end must be the last report: the server refuses the run's token once it is recorded,
        # so no system sample or heartbeat may follow the status call.
        self._sender.system_sampler = None
        self._sender.heartbeat_interval = 0.0
        if self.owns_status:
            status = "succeeded" if exit_code == 0 else "failed"
            # A barrier: it goes last, once everything logged before it is delivered or given up,
            # because the server stops accepting a run's reports once it has ended.
            self._sender.add_call(
                f"/api/runs/{self.id}/status/",
                {"status": status, "exit_code": exit_code},
                label=f"final status ({status})",
                barrier=True,
            )
        if timeout is None:
            timeout = float(os.environ.get("ARBITER_FLUSH_TIMEOUT", "60"))
        self._sender.stop(timeout)
        ok = self._all_delivered()
        if not ok:
            _warn(self.summary())
        return ok

    def _all_delivered(self) -> bool:
        r, pending = self._sender.report, self._sender.pending()
        failed = r.failed_points + r.failed_lines + r.failed_calls + r.dropped_points
        return not failed and not any(pending.values())

    @property
    def report(self) -> Report:
        return self._sender.report

    def summary(self) -> str:
        """One honest sentence: what arrived, what was given up and why, what is still waiting."""
        r, pending = self._sender.report, self._sender.pending()
        points = r.delivered_points + r.failed_points + r.dropped_points + pending["points"]
        lines = r.delivered_lines + r.failed_lines + pending["lines"]
        parts = [
            f"run {self.id}: {r.delivered_points:,} of {points:,} points and "
            f"{r.delivered_lines:,} of {lines:,} log lines delivered"
        ]
        if r.failed_points or r.failed_lines or r.failed_calls:
            parts.append(
                f"given up: {r.failed_points:,} points, {r.failed_lines:,} lines, {r.failed_calls} calls"
                + (f" ({'; '.join(r.failures[:3])})" if r.failures else "")
            )
        if r.dropped_points:
            parts.append(f"{r.dropped_points:,} points dropped while the server was unreachable (buffer full)")
        if any(pending.values()):
            parts.append(
                f"still waiting when time ran out: {pending['points']:,} points, {pending['lines']:,} lines, "
                f"{pending['calls']} calls"
            )
        return "; ".join(parts)

    @property
    def stats(self) -> dict[str, int]:
        r, pending = self._sender.report, self._sender.pending()
        return {
            "delivered_points": r.delivered_points,
            "failed_points": r.failed_points,
            "dropped_points": r.dropped_points,
            "failed_attempts": r.attempts_failed,
            "failed_calls": r.failed_calls,
            "pending": sum(pending.values()),
        }

    # --- reading back ----------------------------------------------------------------------
    def history(self, keys: Sequence[str] | None = None, *, api_key: str | None = None) -> Any:
        """Every logged point of `keys` (all keys by default) as rows: a pandas DataFrame if pandas is installed.

        Reading needs a user API key (the run token only writes): the one given to `init()`, or
        `api_key=`, or ARBITER_API_KEY. Flushes first, so what this script logged is included.
        """
        from .api import Api

        key = api_key or self._api_key or os.environ.get("ARBITER_API_KEY", "")
        if not key:
            raise ValueError("run.history() needs a user API key: pass api_key= or set ARBITER_API_KEY")
        self.flush()
        return Api(self._server, key).run(self.id).history(keys)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def _as_step(step: Any) -> int:
    try:
        value = int(step)  # numpy and torch integers
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"step must be an integer, got {type(step).__name__}") from None
    if value != step:
        raise TypeError(f"step must be an integer, got {step!r}")
    return value


def _ints(col: Sequence[Any]) -> Any:
    tolist = getattr(col, "tolist", None)  # numpy: one C call instead of a Python loop over scalars
    return tolist() if tolist is not None else col


def _floats(col: Sequence[Any]) -> array[float]:
    """A float64 array from a list, an `array` or a numpy array (without importing numpy)."""
    if isinstance(col, array) and col.typecode == "d":
        return col
    dtype = getattr(col, "dtype", None)
    if dtype is not None and str(dtype) == "float64" and getattr(col, "flags", None) is not None:
        out = array("d")
        out.frombytes(memoryview(col.astype("<f8", copy=False)).cast("B"))  # type: ignore[attr-defined]
        return out
    return array("d", _ints(col))


def _finish_all_at_exit() -> None:
    for run in list(_live_runs):
        run.finish(exit_code=1 if _uncaught_exception else 0)


def _remember_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    global _uncaught_exception
    _uncaught_exception = True
    _previous_hook(exc_type, exc, tb)


_previous_hook = sys.excepthook
sys.excepthook = _remember_uncaught
atexit.register(_finish_all_at_exit)
