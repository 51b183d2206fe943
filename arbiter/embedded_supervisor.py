"""The embedded platform's process supervisor: keeps `runplatform`'s children up, restarting crashed ones with back-off.

Policy, after supervisord and systemd (`Restart=on-failure`): a child that exits while the platform is not
stopping is started again after a delay that doubles with each quick failure (1 s, 2 s, 4 s ... capped at
30 s); a child that had been running for the stable period before it exited starts over at the first delay.
The other children are left alone. Each child runs in its own process group, so a crash is cleaned up whole
(a dead Celery worker's pool processes go with it) and Ctrl-C, which the terminal sends to the foreground
group only, reaches the children once, through this supervisor: SIGTERM to every group, SIGKILL after a grace
period. On Linux a child also receives SIGTERM if the supervisor itself is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

logger = logging.getLogger("arbiter.runplatform")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait before the n-th consecutive restart of a child that keeps failing."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0  # a child that ran at least this long before it exited was healthy: back-off resets

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


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask the kernel for SIGTERM when the supervisor dies, so a `kill -9` of runplatform leaves no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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

    # -- one child ---------------------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            list(child.argv),
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
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
        if ran >= self.policy.stable_s:
            child.failures = 0
        child.failures += 1
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

    # -- the loop ----------------------------------------------------------------------------------------
    def step(self) -> None:
        """One pass: notice exits, start what is due."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._on_exit(child, now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.start(child)

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> None:
        """Supervise until SIGINT or SIGTERM, then stop every child."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                self.start(child)
            while not self.stopping:
                self.step()
                time.sleep(self.poll_s)
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
