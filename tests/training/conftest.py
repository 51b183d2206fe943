"""Fixtures of the training tests: runs, API keys, tokens, and a live stack (daphne + a real Celery worker)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from arbiter.accounts.models import User
from training.models import Run, RunStatus
from training.services import runs

FAST_DEMO = {"max_steps": 12, "step_delay_s": 0.0, "save_steps": 5, "logging_steps": 1}


@pytest.fixture
def external_run(researcher: User) -> tuple[Run, str]:
    """A running run created as an external script would, with its plain run token."""
    return runs.create_external_run(owner=researcher, name="ext", config={"lr": 0.1})


@pytest.fixture
def make_run() -> Callable[..., Run]:
    def make(owner: User, **fields: Any) -> Run:
        fields.setdefault("name", "r")
        fields.setdefault("recipe", "demo")
        fields.setdefault("status", RunStatus.SUCCEEDED)
        return Run.objects.create(owner=owner, **fields)

    return make


@pytest.fixture
def live_stack(asgi_server: Any, celery_worker_app: Any, settings: Any, tmp_path: Any) -> Iterator[Any]:
    """The web server (daphne) and a Celery worker in this process whose engines report to that server."""
    settings.ARBITER_PUBLIC_URL = asgi_server.url
    # ARTIFACT_ROOT stays the web server's: it accepts a checkpoint only inside the run's own location under
    # its root (12.3), so a worker writing under another root would have every checkpoint refused.
    yield asgi_server


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_status(run: Run, statuses: set[str], timeout: float = 90) -> Run:
    def done() -> Run | None:
        run.refresh_from_db()
        return run if run.status in statuses else None

    return wait_for(done, timeout=timeout, what=f"run #{run.id} to reach {statuses}")
