"""The Run handle a training script logs to: buffered, non-blocking, flushed at exit."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from types import TracebackType

from ._http import Connection
from ._sender import Sender, _warn
from ._system import make_sampler

_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_uncaught_exception = False


class Run:
    """One run on an Arbiter server. Create it with `arbiter_client.init()` or `attach()`.

    `owns_status`: a run created by `init()` reports its own end (succeeded/failed); a run the
    platform launched (`attach()`) leaves that to the supervisor, which sees the real exit code.
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
    ) -> None:
        self.id = run_id
        self.url = page_url
        self.owns_status = owns_status
        self._step = -1
        self._log_seq = 0
        self._lock = threading.Lock()
        self._finished = False
        if system_interval is None:
            system_interval = float(os.environ.get("ARBITER_SYSTEM_INTERVAL", "15"))
        self._sender = Sender(
            Connection(url, token),
            run_id,
            flush_interval=flush_interval or float(os.environ.get("ARBITER_FLUSH_INTERVAL", "0.002")),
            max_batch=max_batch or int(os.environ.get("ARBITER_MAX_BATCH", "10000")),
            system_interval=system_interval,
            system_sampler=make_sampler() if system_interval > 0 else None,
        )
        self._sender.start()
        _live_runs.add(self)

    # --- the wandb-shaped surface --------------------------------------------------------
    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at `step` (the next step after the last one if omitted).

        Non-finite values (a diverging loss) cannot be charted or sent as JSON: they become a
        log line instead, so the divergence is still visible on the run page.
        """
        now = time.time()
        with self._lock:
            if step is None:
                step = self._step + 1
            self._step = max(self._step, step)
        points = []
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    value = float(value)  # numpy and torch scalars
                except (TypeError, ValueError):
                    _warn(f"metric {key!r} at step {step} is not a number; skipped")
                    continue
            if not math.isfinite(value):
                self.log_text(f"metric {key} is {value} at step {step}", stream="client")
                continue
            points.append((str(key), int(step), float(value), now))
        self._sender.add_metrics(points)

    def log_text(self, text: str, *, stream: str = "client") -> None:
        """Append a line to the run's log."""
        with self._lock:
            seq = self._log_seq
            self._log_seq += 1
        self._sender.add_log((seq, stream, str(text), time.time()))

    def log_checkpoint(self, step: int, path: str) -> None:
        """Tell the platform a checkpoint exists (so the run can be resumed from it)."""
        self._sender.add_call(f"/api/runs/{self.id}/checkpoints/", {"step": int(step), "path": str(path)})

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until everything logged so far is delivered; False on timeout."""
        return self._sender.flush(timeout)

    def finish(self, exit_code: int = 0, *, timeout: float | None = None) -> bool:
        """Deliver what is buffered, report the end (for runs this script created), stop the thread."""
        if self._finished:
            return True
        self._finished = True
        # The end must be the last report: the server refuses the run's token once it is recorded,
        # so no system sample may be queued behind the status call.
        self._sender.system_sampler = None
        if self.owns_status:
            status = "succeeded" if exit_code == 0 else "failed"
            self._sender.add_call(f"/api/runs/{self.id}/status/", {"status": status, "exit_code": exit_code})
        if timeout is None:
            timeout = float(os.environ.get("ARBITER_FLUSH_TIMEOUT", "60"))
        delivered = self._sender.stop(timeout)
        if not delivered:
            _warn(f"run {self.id}: {self._sender.pending()} reports could not be delivered before exit")
        return delivered

    @property
    def stats(self) -> dict[str, int]:
        s = self._sender
        return {
            "delivered_points": s.delivered_points,
            "dropped_points": s.dropped_points,
            "failed_attempts": s.attempts_failed,
            "pending": s.pending(),
        }

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


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
