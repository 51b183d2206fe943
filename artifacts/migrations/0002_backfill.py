"""Artifact rows for the checkpoints and finished exports recorded before the store existed.

Without them, a researcher's own earlier checkpoints and exports would stop passing the launch check.
"""

from __future__ import annotations

import os
from typing import Any

from django.db import migrations


def _uri(path: str) -> str | None:
    if path.startswith("s3://"):
        return path
    local = path.removeprefix("file://")
    if not local.startswith("/"):
        return None
    real = os.path.normpath(os.path.realpath(local))
    return f"file://{real}"


def backfill(apps: Any, schema_editor: Any) -> None:
    Artifact = apps.get_model("artifacts", "Artifact")
    Checkpoint = apps.get_model("training", "Checkpoint")
    ExportJob = apps.get_model("evaluation", "ExportJob")
    seen = set(Artifact.objects.values_list("uri", flat=True))
    rows = []
    for ckpt in Checkpoint.objects.select_related("run").iterator():
        uri = _uri(ckpt.path)
        if uri and uri not in seen:
            seen.add(uri)
            rows.append(Artifact(owner_id=ckpt.run.owner_id, kind="checkpoint", uri=uri, run_id=ckpt.run_id))
    for job in ExportJob.objects.filter(status="done").exclude(path="").select_related("study").iterator():
        uri = _uri(job.path)
        if uri and uri not in seen:
            seen.add(uri)
            kind = "dataset" if job.format == "reward" else "export"
            rows.append(
                Artifact(
                    owner_id=job.study.owner_id,
                    kind=kind,
                    uri=uri,
                    sha256=job.sha256,
                    study_id=job.study_id,
                    export_id=job.pk,
                )
            )
    Artifact.objects.bulk_create(rows, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [("artifacts", "0001_artifacts")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
