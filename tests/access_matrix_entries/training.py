"""Access entries for the training app's URLs (pages at /runs/, API at /api/)."""

from __future__ import annotations

from typing import Any

from tests.access_matrix_entries import RESEARCHERS, Access


def _run(owner: Any) -> dict[str, Any]:
    from training.models import Run

    run = Run.objects.create(owner=owner, name="matrix", recipe="demo", config={}, status="succeeded")
    return {"run_id": run.id}


def _run_with_table(owner: Any) -> dict[str, Any]:
    from training.models import RunTable

    kwargs = _run(owner)
    RunTable.objects.create(
        run_id=kwargs["run_id"], name="samples", step=1, columns=["prompt", "completion"], rows=[["p", "c"]]
    )
    return kwargs


def _api_key(owner: Any) -> dict[str, Any]:
    from training.services.runs import issue_api_token

    token, _ = issue_api_token(user=owner, name="matrix")
    return {"key_id": token.id}


ENTRIES = {
    "training:run_list": Access(roles=RESEARCHERS),
    "training:run_new": Access(roles=RESEARCHERS),
    "training:run_compare": Access(roles=RESEARCHERS),
    "training:api_keys": Access(roles=RESEARCHERS),
    "training:panel_pins": Access(roles=RESEARCHERS),  # the user's own pins only: nothing of others to reach
    # Revoking someone else's key is a 404 (the key is looked up among the user's own).
    "training:api_key_revoke": Access(roles=RESEARCHERS, objects="api_key", method="post"),
    "training:run_detail": Access(roles=RESEARCHERS, objects="run"),
    "training:run_panel": Access(roles=RESEARCHERS, objects="run"),
    "training:run_samples": Access(roles=RESEARCHERS, objects="run_with_table"),
    "training:run_checkpoints": Access(roles=RESEARCHERS, objects="run"),
    "training:run_cancel": Access(roles=RESEARCHERS, objects="run", method="post"),
    "training:run_retry": Access(roles=RESEARCHERS, objects="run", method="post"),
    "training:run_resume": Access(roles=RESEARCHERS, objects="run", method="post"),
    # Rename/tag, archive and delete: the owner (or an admin); anyone else gets 404 as for every other run action.
    "training:run_edit": Access(roles=RESEARCHERS, objects="run", method="post"),
    "training:run_archive": Access(roles=RESEARCHERS, objects="run", method="post"),
    "training:run_delete": Access(roles=RESEARCHERS, objects="run"),
    # The API: reads accept a session (researchers who may see the run); writes need a run token.
    # GET lists the runs the caller may see (POST, a script's run, needs an API key: tests/training/test_run_json.py).
    "training_api:runs": Access(roles=RESEARCHERS),
    "training_api:run_launch": Access(auth="token", method="post"),
    "training_api:run_state": Access(roles=RESEARCHERS, objects="run"),
    "training_api:run_metrics": Access(roles=RESEARCHERS, objects="run"),
    "training_api:run_logs": Access(roles=RESEARCHERS, objects="run"),
    "training_api:run_history": Access(roles=RESEARCHERS, objects="run"),
    "training_api:run_heartbeat": Access(auth="token", objects="run", method="post"),
    "training_api:run_status": Access(roles=RESEARCHERS, objects="run"),
    # GET lists a run's tables (session or API key); POST stores one (run token).
    "training_api:run_tables": Access(roles=RESEARCHERS, objects="run_with_table"),
    "training_api:run_system": Access(auth="token", objects="run", method="post"),
    "training_api:run_checkpoints": Access(auth="token", objects="run", method="post"),
    "training_api:openapi": Access(auth="public"),
    "training_api:docs": Access(auth="public"),
}
BUILDERS: dict[str, object] = {"run": _run, "api_key": _api_key, "run_with_table": _run_with_table}
