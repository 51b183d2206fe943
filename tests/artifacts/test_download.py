"""A checkpoint listed on the run page downloads as a zip holding its files byte for byte, from the local store
and from the bucket; only for researchers who may see the run."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from arbiter.accounts.models import User
from artifacts import uris
from artifacts.services import default_store, run_uri
from training.models import Run, RunStatus
from training.services import ingest

pytestmark = pytest.mark.django_db

FILES = {"model.safetensors": os.urandom(3 * 1024 * 1024 + 5), "config.json": b'{"a": 1}', "tok/vocab.txt": b"x\ny"}


def _zip(answer: Any) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(answer)))
    return {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}


def _write(folder: Path) -> None:
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def test_the_run_page_links_a_zip_of_the_checkpoint(
    researcher: User, other_researcher: User, client_for: Any, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_STORE_URL = ""
    run = Run.objects.create(owner=researcher, name="dl", recipe="demo", status=RunStatus.SUCCEEDED)
    folder = Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / "checkpoint-8"
    _write(folder)
    checkpoint = ingest.record_checkpoint(run=run, step=8, path=str(folder))
    page = client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    link = f"/artifacts/checkpoints/{checkpoint.id}/download/"
    assert link in page
    answer = client_for(researcher).get(link)
    assert answer.status_code == 200
    assert answer["Content-Disposition"] == f'attachment; filename="run-{run.id}-checkpoint-8.zip"'
    assert _zip(answer) == FILES
    assert client_for(other_researcher).get(link).status_code == 404
    Run.objects.filter(id=run.id).update(shared=True)
    assert _zip(client_for(other_researcher).get(link)) == FILES


def test_a_checkpoint_in_the_bucket_downloads_the_same_bytes(
    researcher: User, client_for: Any, s3_store: str, tmp_path: Path
) -> None:
    run = Run.objects.create(
        owner=researcher, name="dl", recipe="demo", status=RunStatus.RUNNING, started_at="2026-01-01T00:00:00Z"
    )
    _write(tmp_path / "ckpt")
    uri = run_uri(run_id=run.id).child("checkpoint-8")
    default_store().put_tree(tmp_path / "ckpt", uri)
    checkpoint = ingest.record_checkpoint(run=run, step=8, path=str(uri))
    answer = client_for(researcher).get(f"/artifacts/checkpoints/{checkpoint.id}/download/")
    assert answer.status_code == 200 and _zip(answer) == FILES
    assert str(uris.parse(checkpoint.path)) == str(uri)
