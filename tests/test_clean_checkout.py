"""A test run leaves the checkout as it found it (issue 12 item 14).

Broker folders, databases, artifacts and mail belong under ARBITER_VAR_DIR (var/, ignored) or a temporary
directory. A kombu `control/` folder once appeared in the current directory on every run and got committed;
these tests run pytest itself, in a subprocess, and compare `git status` before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

STRAY_ENV = "ARBITER_TEST_WRITE_STRAY"
# What a run may add: its state folder, and Python's and pytest's caches (all ignored by .gitignore).
MAY_APPEAR = ("var/", ".pytest_cache/")


def _checkout_status() -> set[str] | None:
    """Every changed, untracked or ignored path of the checkout, ignored ones included: a folder that
    someone added to .gitignore instead of moving it under var/ still counts. None outside git."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.stdout.splitlines())


def _unexpected(before: set[str], after: set[str]) -> list[str]:
    def allowed(line: str) -> bool:
        path = line[3:]
        return path.startswith(MAY_APPEAR) or "__pycache__/" in path or path.endswith("__pycache__/")

    return sorted(line for line in after - before if not allowed(line))


def _pytest(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess on the embedded setup (SQLite in tmp_path, filesystem broker in var/), with the
    suite's own clean-checkout check switched on (tests/conftest.py, as CI has it)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"}
    }
    base.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL="",
        ARBITER_CHECK_CLEAN_TREE="1",
        PYTHONUNBUFFERED="1",
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_test_run_leaves_git_status_clean(tmp_path: Path) -> None:
    """Tests that write the most state: a Celery worker on the embedded filesystem broker (its pidbox and
    exchange tables were the stray `control/` folder), and SDK runs reporting to a live server on SQLite."""
    before = _checkout_status()
    if before is None:
        pytest.skip("not a git checkout")
    result = _pytest(
        "tests/test_foundation.py::test_celery_round_trip_through_a_real_worker",
        "tests/training/test_sqlite_ingest.py::test_two_sdk_runs_at_once_deliver_everything_without_warnings",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
    assert _unexpected(before, _checkout_status() or set()) == []


def test_a_test_run_that_writes_into_the_checkout_fails(tmp_path: Path) -> None:
    """The check that guards the whole suite in CI notices a stray file and fails the run, naming it."""
    if _checkout_status() is None:
        pytest.skip("not a git checkout")
    stray = f"stray-{uuid.uuid4().hex[:8]}.txt"
    try:
        result = _pytest(
            f"{Path(__file__).relative_to(ROOT)}::test_writes_a_stray_file_into_the_checkout",
            tmp_path=tmp_path,
            **{STRAY_ENV: stray},
        )
        assert (ROOT / stray).exists()  # the inner test did run and write it
        assert result.returncode != 0, result.stdout[-3000:]
        assert "The test run changed the checkout" in result.stdout + result.stderr
        assert f"?? {stray}" in result.stdout + result.stderr
    finally:
        (ROOT / stray).unlink(missing_ok=True)


@pytest.mark.skipif(STRAY_ENV not in os.environ, reason="run only by the test above, in a subprocess")
def test_writes_a_stray_file_into_the_checkout() -> None:
    (ROOT / os.environ[STRAY_ENV]).write_text("left behind by a test\n")
