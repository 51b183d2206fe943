"""`make run`'s command on its embedded defaults: SQLite, filesystem broker, web + worker from one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

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
