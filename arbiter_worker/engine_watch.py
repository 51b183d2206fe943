"""Watch one engine process until it exits: pump its output, beat, honour cancel, leave no stragglers. No Django.

The one loop of both supervisors: the remote GPU worker (arbiter_worker.supervisor, reporting over HTTP) and the
in-process Celery supervisor (training.services.supervisor, writing to the database). What differs — where
lines go, how a beat is sent and a cancel learnt — comes in as callbacks; the watching itself (two pipes read
by threads, a grace period between SIGTERM and SIGKILL, the process group killed after the leader exits) is
written once, here, so a fix to it reaches both.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

MAX_LINE_CHARS = 10_000
STRAGGLER_WAIT_S = 2.0  # after the engine exits, how long a grandchild may hold its pipes open before SIGKILL


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _pump(stream: IO[bytes], name: str, out: queue.Queue[tuple[str, str] | None]) -> None:
    for raw in iter(stream.readline, b""):
        out.put((name, raw.decode("utf-8", "replace").rstrip("\n")[:MAX_LINE_CHARS].replace("\x00", "")))
    out.put(None)


@dataclass(frozen=True)
class Watched:
    """How the engine ended."""

    exit_code: int
    cancelled: bool


def watch_engine(
    proc: subprocess.Popen[bytes],
    *,
    add_line: Callable[[str, str], None],
    flush: Callable[[], None],
    heartbeat: Callable[[], bool],
    cancel_requested: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
    heartbeat_s: float = 5.0,
    grace_s: float = 10.0,
) -> Watched:
    """Read `proc`'s stdout and stderr (started with pipes, in a session of its own) until it has exited.

    `add_line(stream, text)` takes each line; `flush()` sends what was added, every `poll_s`. `heartbeat()` is
    called every `heartbeat_s` and returns True when a cancel was requested; `cancel_requested()`, when given, is
    a cheaper check asked on the polls in between. On cancel the process group gets SIGTERM, then SIGKILL after
    `grace_s`. Whatever the engine left in its group is killed once it has exited.
    """
    pgid = proc.pid  # start_new_session: the engine leads its own group
    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
    for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
        assert stream is not None, "the engine must be started with stdout and stderr pipes"
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True).start()
    cancelled_at: float | None = None
    exited_at: float | None = None
    next_beat = 0.0
    open_streams = 2
    while open_streams or proc.poll() is None:
        if proc.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > STRAGGLER_WAIT_S:
                signal_group(pgid, signal.SIGKILL)  # a grandchild still holds the pipes open after the engine exited
        deadline = time.monotonic() + poll_s
        while (left := deadline - time.monotonic()) > 0 and open_streams:
            try:
                item = lines.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                open_streams -= 1
            else:
                add_line(*item)
        if not open_streams and proc.poll() is None:
            time.sleep(min(poll_s, 0.1))
        flush()
        now = time.monotonic()
        cancel = False
        if now >= next_beat:
            next_beat = now + heartbeat_s
            cancel = heartbeat()
        elif cancelled_at is None and cancel_requested is not None:
            cancel = cancel_requested()
        if cancel and cancelled_at is None:
            cancelled_at = now
            add_line("stderr", "[arbiter] cancel requested: SIGTERM to the process group")
            signal_group(pgid, signal.SIGTERM)
        if cancelled_at is not None and proc.poll() is None and now - cancelled_at > grace_s:
            add_line("stderr", f"[arbiter] still running after {grace_s:.0f}s: SIGKILL")
            signal_group(pgid, signal.SIGKILL)
            cancelled_at = float("-inf")  # killed: do not signal again
    # The leader exited; stragglers it left in its group must not outlive the run.
    signal_group(pgid, signal.SIGKILL)
    exit_code = proc.wait()
    add_line("stderr", f"[arbiter] engine exited with code {exit_code}")
    flush()
    return Watched(exit_code=exit_code, cancelled=cancelled_at is not None)
