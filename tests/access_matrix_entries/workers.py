"""The worker API (/api/worker/…): a worker credential, never a session (tests/workers cover the tokens)."""

from __future__ import annotations

from typing import Any

from tests.access_matrix_entries import Access


def _run(owner: Any) -> dict[str, Any]:
    from training.models import Run

    return {"run_id": Run.objects.create(owner=owner, name="matrix", recipe="demo", status="queued").id}


ENTRIES = {
    "workers_api:hello": Access(auth="token", method="post"),
    "workers_api:claim": Access(auth="token", objects="worker_run", method="post"),
    "workers_api:heartbeat": Access(auth="token", objects="worker_run", method="post"),
    "workers_api:finish": Access(auth="token", objects="worker_run", method="post"),
}
BUILDERS: dict[str, object] = {"worker_run": _run}
