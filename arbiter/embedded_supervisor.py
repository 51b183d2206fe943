"""The embedded platform's process supervisor: keeps `runplatform`'s children up, restarting crashed ones with back-off.

Policy, after supervisord and systemd (`Restart=on-failure`): a child that exits while the platform is not
stopping is started again after a delay that doubles with each quick failure (1 s, 2 s, 4 s ... capped at
30 s); a child that had been running for the stable period before it exited starts over at the first delay.
The other children are left alone. A child that crashes quickly `give_up_after` times in a row (each run shorter
than the stable period: supervisord's `startretries` and its FATAL state) is given up on: it is not restarted,
and one message says which child, its last exit status and the last lines it wrote to stderr, and how to try
again (SIGUSR1 to runplatform starts the given-up children afresh; or restart runplatform). SIGHUP (the
terminal closing) stops runplatform like SIGINT and SIGTERM, as a foreground command should.

Each child runs in its own process group, so a crash is cleaned up whole (a dead Celery worker's pool processes
go with it) and Ctrl-C, which the terminal sends to the foreground group only, reaches the children once,
through this supervisor: SIGTERM to every group, SIGKILL after a grace period. On Linux a child also receives
SIGTERM if the supervisor itself is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

import psutil

logger = logging.getLogger("arbiter.runplatform")

_PR_SET_PDEATHSIG = 1
STDERR_TAIL_LINES = 20  # kept per child, for the message that says why it was given up on


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait before the n-th consecutive restart of a child that keeps failing."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0  # a child that ran at least this long before it exited was healthy: back-off resets
    # Quick failures in a row after which the child is given up on (delays 1+2+4+8+16+30+30 s: ~1.5 min of trying).
    give_up_after: int = 8

    def delay(self, *, failures: int) -> float:
        """Delay before restart number `failures` (1 for the first failure in a row)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, failures - 1)))


@dataclass
class Child:
    """One supervised command and its restart state."""

    name: str
    argv: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive exits that came before the stable period
    restarts: int = 0
    restart_at: float | None = None
    fatal: bool = False  # given up on after too many quick failures; SIGUSR1 (retry_fatal) clears it
    last_status: int | None = None
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    reader: threading.Thread | None = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask the kernel for SIGTERM when the supervisor dies, so a `kill -9` of runplatform leaves no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


STDERR_PARTIAL_MAX = 4096  # bytes of an unfinished line kept for the give-up message


def _tee_stderr(pipe: IO[bytes], tail: deque[str], out: IO[bytes] | None) -> None:
    """Pass a child's stderr through to ours as it comes (a progress bar redrawn with carriage returns shows at
    once, nothing waits for a newline), keeping its last lines (an unfinished one cut to STDERR_PARTIAL_MAX)."""
    partial = b""
    with contextlib.suppress(OSError, ValueError):
        fd = pipe.fileno()
        while chunk := os.read(fd, 65536):
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.write(chunk)
                    out.flush()
            *lines, partial = (partial + chunk).split(b"\n")
            tail.extend(_last_redraw(line) for line in lines)
            partial = partial[-STDERR_PARTIAL_MAX:]
    if partial:
        tail.append(_last_redraw(partial))
    with contextlib.suppress(OSError):
        pipe.close()


def _last_redraw(line: bytes) -> str:
    """What a terminal shows of a line redrawn with carriage returns (a progress bar): its last drawing."""
    return line.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode("utf-8", "replace")


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to a process group; False once the group is empty."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class EmbeddedSupervisor:
    """Start children, restart the ones that exit, stop them all on request."""

    def __init__(
        self,
        children: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str],
        policy: BackoffPolicy | None = None,
        grace_s: float = 15.0,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [Child(name=name, argv=list(argv)) for name, argv in children.items()]
        self.env = dict(env)
        self.policy = policy or BackoffPolicy()
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.clock = clock
        self.stopping = False
        self.retry_requested = False

    # -- one child ---------------------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        # stderr through a pipe, passed on by a thread: the terminal still shows everything, and the last lines
        # are at hand to say why a child was given up on.
        child.proc = subprocess.Popen(
            list(child.argv),
            env=self.env,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child.stderr_tail.clear()
        assert child.proc.stderr is not None
        out = getattr(sys.stderr, "buffer", None)
        child.reader = threading.Thread(
            target=_tee_stderr,
            args=(child.proc.stderr, child.stderr_tail, out),
            name=f"stderr-{child.name}",
            daemon=True,
        )
        child.reader.start()
        child.started_at = self.clock()
        child.restart_at = None
        logger.info("%s started (pid %d)", child.name, child.proc.pid)

    def _on_exit(self, child: Child, now: float) -> None:
        assert child.proc is not None
        status, pid = child.proc.returncode, child.proc.pid
        ran = now - child.started_at
        # What the dead leader left in its group (a Celery worker's pool processes) would keep a broker
        # connection and maybe a task: end it before a new worker starts.
        if _signal_group(pid, signal.SIGKILL):
            logger.warning("%s: killed what was left of process group %d", child.name, pid)
        child.proc = None
        child.last_status = status
        if child.reader is not None:
            child.reader.join(timeout=2)  # the group is dead: its stderr pipe ends, the last lines are read
        if ran >= self.policy.stable_s:
            child.failures = 0
        child.failures += 1
        if child.failures >= self.policy.give_up_after:
            self._give_up(child, pid=pid, ran=ran)
            return
        delay = self.policy.delay(failures=child.failures)
        child.restart_at = now + delay
        child.restarts += 1
        logger.error(
            "%s (pid %d) exited with status %s after %.1f s; restarting in %.1f s"
            " (restart %d, %d quick failure%s in a row)",
            child.name,
            pid,
            status,
            ran,
            delay,
            child.restarts,
            child.failures,
            "" if child.failures == 1 else "s",
        )

    def _give_up(self, child: Child, *, pid: int, ran: float) -> None:
        """FATAL, said once in words: which child, how it last ended, its last stderr lines, how to try again."""
        child.fatal = True
        child.restart_at = None
        others = [c.name for c in self.children if c is not child and not c.fatal]
        lines = list(child.stderr_tail)[-10:]
        tail = "\n".join(f"    | {line}" for line in lines) if lines else "    (it wrote nothing to stderr)"
        logger.critical(
            "Gave up on %s: it crashed %d times in a row, each within %.0f s of starting (last: pid %d, exit status "
            "%s after %.1f s). It will not be restarted. Its last stderr lines:\n%s\n"
            "%s. Fix the cause, then send SIGUSR1 to runplatform (kill -USR1 %d) to start %s again, "
            "or stop runplatform (Ctrl-C) and start it again.",
            child.name,
            child.failures,
            self.policy.stable_s,
            pid,
            child.last_status,
            ran,
            tail,
            f"The others keep running: {', '.join(others)}" if others else "No other child is running",
            os.getpid(),
            child.name,
        )

    def retry_fatal(self, *_: object) -> None:
        """SIGUSR1: start the given-up children again, with a fresh count (done by the loop, not in the handler)."""
        self.retry_requested = True

    # -- the loop ----------------------------------------------------------------------------------------
    def step(self) -> None:
        """One pass: notice exits, start what is due."""
        now = self.clock()
        if self.retry_requested:
            self.retry_requested = False
            for child in self.children:
                if child.fatal:
                    logger.warning("%s: starting again on request (SIGUSR1)", child.name)
                    child.fatal, child.failures = False, 0
                    child.restart_at = now
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._on_exit(child, now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.start(child)

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> bool:
        """Supervise until SIGINT, SIGTERM or SIGHUP, then stop every child. False when every child was given up on.

        SIGHUP stops too: closing the terminal must not leave the platform running in the background holding its
        port. SIGUSR1 starts the given-up children again."""
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.request_stop) for sig in stops}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self.retry_fatal)
        try:
            for child in self.children:
                self.start(child)
            while not self.stopping:
                self.step()
                if all(c.fatal for c in self.children):
                    logger.critical("Every child was given up on: runplatform stops.")
                    return False
                time.sleep(self.poll_s)
            return True
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _descendants(self) -> list[psutil.Process]:
        """Every process the children started, including those in sessions of their own (engine subprocesses)."""
        found: list[psutil.Process] = []
        for child in self.children:
            if child.proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                found.extend(psutil.Process(child.proc.pid).children(recursive=True))
        return found

    def stop(self) -> None:
        """SIGTERM to every child's process group, SIGKILL to whatever is left after the grace period.

        A worker's engine runs in a session of its own (so that cancel can kill its group whole), out of reach
        of the worker's group signal: it is found by parentage before anything dies, and signalled too.
        """
        self.stopping = True
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        descendants = self._descendants()
        groups = {c.proc.pid for c in running if c.proc is not None}
        for child in running:
            assert child.proc is not None
            logger.info("stopping %s (pid %d)", child.name, child.proc.pid)
            _signal_group(child.proc.pid, signal.SIGTERM)  # its group: the pid of a session leader is the pgid
        for process in descendants:
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) not in groups:
                    process.terminate()
        deadline = time.monotonic() + self.grace_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killing it", child.name, self.grace_s)
        # Leaders and anything they left behind in their groups.
        for child in self.children:
            if child.proc is not None:
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        _, alive = psutil.wait_procs(descendants, timeout=max(0.1, deadline - time.monotonic()))
        for process in alive:
            with contextlib.suppress(psutil.Error):
                logger.warning("killing pid %d (%s), left behind by a stopped child", process.pid, process.name())
                process.kill()
