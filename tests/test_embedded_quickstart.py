"""`make run`'s command on its embedded defaults: SQLite, filesystem broker, web + worker from one process."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from arbiter.embedded_supervisor import BackoffPolicy, EmbeddedSupervisor
from tests.conftest import ROOT, free_port, wait_for_port


def _embedded_env(var_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(ARBITER_VAR_DIR=str(var_dir), PORT=str(port), DJANGO_SETTINGS_MODULE="arbiter.settings")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


def worktree_status() -> list[str]:
    """`git status --porcelain` of the checkout, untracked files listed one by one."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(out.stdout.splitlines())


def test_runplatform_serves_pages_and_runs_tasks_with_no_servers(tmp_path: Path) -> None:
    port = free_port()
    env = _embedded_env(tmp_path, port)
    before = worktree_status()
    log = (tmp_path / "platform.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runplatform", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/") as response:
            assert response.status == 200
            assert b"Log in to Arbiter" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/vendor/htmx.min.js") as response:
            assert response.status == 200

        # The worker started by the same command answers a task through the filesystem broker.
        answer = subprocess.run(
            [sys.executable, "-c", "from arbiter.tasks import ping; print(ping.delay('embedded').get(timeout=60))"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert "'pong': 'embedded'" in answer.stdout, answer.stderr[-2000:]

        assert (tmp_path / "db.sqlite3").exists()
        credentials = (tmp_path / "initial-credentials.txt").read_text()
        assert "researcher" in credentials and "annotator" in credentials and "admin" in credentials
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "platform.log").read_text()
    assert f"running at http://127.0.0.1:{port}/" in output
    # Broker state (kombu's exchange tables, Celery's pidbox) lives under ARBITER_VAR_DIR, never in the
    # directory the platform was started from: the checkout is exactly as it was.
    assert (tmp_path / "broker" / "control").is_dir()
    assert worktree_status() == before


def test_runplatform_start_is_idempotent_for_accounts(tmp_path: Path) -> None:
    """A second start reuses the accounts and passwords of the first (no duplicate users, same credentials)."""
    env = _embedded_env(tmp_path, free_port())
    code = (
        "import django; django.setup();"
        "from arbiter.management.commands.runplatform import Command;"
        "from django.core.management import call_command; call_command('migrate', verbosity=0);"
        "c = Command(); a = c._ensure_accounts(); b = c._ensure_accounts();"
        "from arbiter.accounts.models import User; print(a == b, User.objects.count())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "True 3", out.stderr[-2000:]


def _wait_for_line(
    path: Path, pattern: str, proc: subprocess.Popen[bytes], *, after: int = 0, timeout: float = 90
) -> re.Match[str]:
    """The first match of `pattern` in the log past character `after`; fails if the platform exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.compile(pattern).search(path.read_text(errors="replace"), after)
        if match:
            return match
        assert proc.poll() is None, f"runplatform exited with {proc.returncode}:\n{path.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{path.read_text()[-3000:]}")


def test_runplatform_restarts_a_killed_worker_while_the_web_server_keeps_answering(tmp_path: Path) -> None:
    port = free_port()
    env = _embedded_env(tmp_path, port)
    log_path = tmp_path / "platform.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runplatform", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    failures: list[str] = []
    answered = 0
    watching = threading.Event()

    def watch_web() -> None:
        nonlocal answered
        while watching.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                    answered += response.status == 200
            except OSError as error:
                failures.append(repr(error))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_web, daemon=True)
    try:
        web_pid = int(_wait_for_line(log_path, r"web started \(pid (\d+)\)", proc).group(1))
        first = _wait_for_line(log_path, r"worker started \(pid (\d+)\)", proc)
        worker_pid = int(first.group(1))
        wait_for_port(port, proc, timeout=60)
        watching.set()
        watcher.start()

        os.kill(worker_pid, signal.SIGKILL)
        _wait_for_line(log_path, rf"worker \(pid {worker_pid}\) exited with status -9 .* restarting in", proc)
        second = _wait_for_line(log_path, r"worker started \(pid (\d+)\)", proc, after=first.end())
        new_worker_pid = int(second.group(1))
        assert new_worker_pid != worker_pid

        # The new worker takes tasks through the same broker.
        answer = subprocess.run(
            [sys.executable, "-c", "from arbiter.tasks import ping; print(ping.delay('again').get(timeout=90))"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "'pong': 'again'" in answer.stdout, answer.stderr[-2000:]
        watching.clear()
        watcher.join(timeout=15)
        assert failures == [], failures[:5]
        assert answered > 0
        # The web server was never restarted: the same process answered throughout.
        assert psutil.Process(web_pid).is_running()
        assert f"web (pid {web_pid}) exited" not in log_path.read_text()
        descendants = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert web_pid in descendants and new_worker_pid in descendants
    finally:
        watching.clear()
        os.kill(proc.pid, signal.SIGTERM)  # the supervisor alone, as Ctrl-C would: it stops its children
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    # No orphans: every process the platform had started is gone.
    left = [
        pid for pid in descendants if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert left == [], [psutil.Process(pid).cmdline() for pid in left]


def test_supervisor_backs_off_exponentially_to_a_cap_and_resets_after_a_stable_run() -> None:
    """Real child processes, a hand-driven clock: the delays follow the policy and the steady child is left alone."""
    now = [1000.0]
    supervisor = EmbeddedSupervisor(
        {
            "flaky": [sys.executable, "-c", "raise SystemExit(3)"],
            "steady": [sys.executable, "-c", "import time; time.sleep(600)"],
        },
        env=dict(os.environ),
        policy=BackoffPolicy(initial_s=1, factor=2, max_s=8, stable_s=60),
        clock=lambda: now[0],
    )
    flaky, steady = supervisor.children
    for child in supervisor.children:
        supervisor.start(child)
    assert steady.proc is not None
    steady_pid = steady.proc.pid
    delays = []
    try:
        for _ in range(6):
            assert flaky.proc is not None
            flaky.proc.wait(timeout=30)
            now[0] += 0.5  # died quickly
            supervisor.step()
            assert flaky.proc is None and flaky.restart_at is not None
            delays.append(flaky.restart_at - now[0])
            supervisor.step()  # not due yet: nothing starts
            assert flaky.proc is None
            now[0] = flaky.restart_at
            supervisor.step()
        assert delays == [1, 2, 4, 8, 8, 8]
        # A run that lasted the stable period counts as healthy: the next failure waits the first delay again.
        assert flaky.proc is not None
        flaky.proc.wait(timeout=30)
        now[0] += 60
        supervisor.step()
        assert flaky.restart_at is not None and flaky.restart_at - now[0] == 1
        assert steady.proc is not None and steady.proc.pid == steady_pid and steady.proc.poll() is None
    finally:
        supervisor.stop()
    assert steady.proc.returncode == -signal.SIGTERM


def test_stop_ends_what_the_children_started_in_sessions_of_their_own(tmp_path: Path) -> None:
    """Like a worker's engine (start_new_session, so cancel can kill its group): outside the group, not missed."""
    pid_file = tmp_path / "grandchild.pid"
    spawn = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "time.sleep(600)"
    )
    supervisor = EmbeddedSupervisor({"worker": [sys.executable, "-c", spawn]}, env=dict(os.environ), grace_s=5)
    (child,) = supervisor.children
    supervisor.start(child)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(int(pid_file.read_text()))
    assert child.proc is not None and os.getpgid(grandchild.pid) != child.proc.pid  # a group signal misses it
    supervisor.stop()
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_a_child_that_keeps_crashing_at_start_is_given_up_on_once_in_words(caplog: pytest.LogCaptureFixture) -> None:
    """A real child that exits at once: after `give_up_after` quick crashes it stays down, one message names it, its
    exit status, its last stderr lines and how to restart it; the other child keeps running; SIGUSR1 tries again."""
    now = [1000.0]
    crash = "import sys; print('connecting to the broker', file=sys.stderr); sys.exit('broker refused: bad password')"
    supervisor = EmbeddedSupervisor(
        {"worker": [sys.executable, "-c", crash], "web": [sys.executable, "-c", "import time; time.sleep(600)"]},
        env=dict(os.environ),
        policy=BackoffPolicy(initial_s=1, factor=2, max_s=4, stable_s=60, give_up_after=4),
        clock=lambda: now[0],
    )
    worker, web = supervisor.children
    caplog.set_level(logging.INFO, logger="arbiter.runplatform")
    for child in supervisor.children:
        supervisor.start(child)
    try:
        # A run that lasted the stable period resets the count: 3 quick crashes, a long run, 1 quick crash: alive.
        for ran in (0.5, 0.5, 0.5, 61, 0.5):
            assert worker.proc is not None
            worker.proc.wait(timeout=30)
            now[0] += ran
            supervisor.step()
            assert not worker.fatal and worker.restart_at is not None
            now[0] = worker.restart_at
            supervisor.step()
        assert worker.failures == 2
        for _ in range(2):  # the 3rd and 4th quick crashes in a row
            assert worker.proc is not None
            worker.proc.wait(timeout=30)
            now[0] += 0.5
            supervisor.step()
            if worker.restart_at is not None:
                now[0] = worker.restart_at
                supervisor.step()
        assert worker.fatal and worker.proc is None and worker.restart_at is None
        for _ in range(5):  # stays down, and says so only once
            now[0] += 100
            supervisor.step()
        assert worker.proc is None
        given_up = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(given_up) == 1
        message = given_up[0].getMessage()
        assert message.startswith("Gave up on worker: it crashed 4 times in a row")
        assert "exit status 1" in message and "| broker refused: bad password" in message
        assert "| connecting to the broker" in message
        assert "The others keep running: web" in message and f"kill -USR1 {os.getpid()}" in message
        assert web.proc is not None and web.proc.poll() is None
        # SIGUSR1 (here its handler) starts the given-up child again with a fresh count.
        supervisor.retry_fatal()
        supervisor.step()
        assert not worker.fatal and worker.failures == 0 and worker.proc is not None
    finally:
        supervisor.stop()


def test_sighup_stops_the_supervisor_and_its_children_and_sigusr1_does_not() -> None:
    """Closing the terminal (SIGHUP) stops runplatform and every child, as Ctrl-C does: nothing is left running in
    the background holding the port. SIGUSR1 is the retry signal and leaves everything running."""
    supervisor = EmbeddedSupervisor(
        {"web": [sys.executable, "-c", "import time; time.sleep(600)"]}, env=dict(os.environ), poll_s=0.05
    )
    (web,) = supervisor.children
    seen: list[Any] = []

    def send_signals() -> None:  # signal handlers run in the main thread, where run() is
        deadline = time.monotonic() + 30
        while web.proc is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert web.proc is not None
        seen.append(psutil.Process(web.proc.pid))
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
        seen.append(web.proc is not None and web.proc.poll() is None and not supervisor.stopping)
        os.kill(os.getpid(), signal.SIGHUP)

    sender = threading.Thread(target=send_signals)
    sender.start()
    returned = supervisor.run()
    sender.join(timeout=30)
    child, alive_after_usr1 = seen
    assert alive_after_usr1 is True and returned is True
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_childs_stderr_passes_through_as_it_comes_not_line_by_line() -> None:
    """A progress bar redrawn with carriage returns (no newline until it ends) shows while the child runs, and the
    give-up message's tail keeps what a terminal would show of each line."""
    from collections import deque

    from arbiter.embedded_supervisor import _tee_stderr

    class Out:
        def __init__(self) -> None:
            self.chunks: list[tuple[float, bytes]] = []

        def write(self, data: bytes) -> int:
            self.chunks.append((time.monotonic(), data))
            return len(data)

        def flush(self) -> None:
            return None

    script = (
        "import sys\n"
        "for i in range(3): sys.stderr.write(f'\\rdownloading {i}/3'); sys.stderr.flush()\n"
        "sys.stdin.read()\n"  # holds the line open until the test has seen the bar
        "sys.stderr.write('\\rdone       \\nbye\\r\\n')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    out, tail = Out(), deque[str](maxlen=20)
    assert proc.stderr is not None and proc.stdin is not None
    reader = threading.Thread(target=_tee_stderr, args=(proc.stderr, tail, out), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while b"downloading 2/3" not in b"".join(c for _, c in out.chunks) and time.monotonic() < deadline:
        time.sleep(0.02)
    # the bar is through while the child still waits, its line unfinished
    assert b"".join(c for _, c in out.chunks) == b"\rdownloading 0/3\rdownloading 1/3\rdownloading 2/3"
    assert proc.poll() is None
    proc.stdin.close()
    reader.join(timeout=30)
    proc.wait(timeout=30)
    assert b"".join(c for _, c in out.chunks).endswith(b"bye\r\n")
    assert list(tail) == ["done       ", "bye"]
