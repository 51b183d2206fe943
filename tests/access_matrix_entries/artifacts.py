"""Artifact downloads: a checkpoint of a run the researcher owns (another researcher gets 404)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from tests.access_matrix_entries import RESEARCHERS, Access


def _checkpoint(owner: Any) -> dict[str, Any]:
    from pathlib import Path

    from training.models import Run
    from training.services import ingest

    run = Run.objects.create(owner=owner, name="matrix", recipe="demo", status="succeeded")
    folder = Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / "checkpoint-1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return {"checkpoint_id": ingest.record_checkpoint(run=run, step=1, path=str(folder)).id}


ENTRIES = {"artifacts:checkpoint_download": Access(roles=RESEARCHERS, objects="checkpoint")}
BUILDERS: dict[str, object] = {"checkpoint": _checkpoint}
