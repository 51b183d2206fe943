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
    from artifacts.store import S3Store

    listed = []
    real_list = S3Store.list

    def counted(self: S3Store, at: uris.Uri) -> list[tuple[str, int]]:
        listed.append(str(at))
        return real_list(self, at)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(S3Store, "list", counted)
        answer = client_for(researcher).get(f"/artifacts/checkpoints/{checkpoint.id}/download/")
        assert answer.status_code == 200 and _zip(answer) == FILES
    assert listed == [str(uri)]  # the view's listing is the zip's: one LIST of the bucket a download
    assert str(uris.parse(checkpoint.path)) == str(uri)


def test_a_folder_emptied_before_the_zip_is_built_fails_the_download_instead_of_an_empty_zip(tmp_path: Path) -> None:
    """The view checks the files exist; if they go before the stream reads them, the stream raises (the browser
    shows a failed download) rather than finishing a valid zip with nothing in it. A file removed after the
    listing fails the same way when it is opened."""
    from artifacts.archive import zip_stream
    from artifacts.store import LocalStore

    store = LocalStore(uris.parse(tmp_path.as_uri()))
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    _write(folder)
    assert set(_zip(zip_stream(store, uris.parse(folder.as_uri()), folder="c"))) == set(FILES)
    stream = zip_stream(store, uris.parse(folder.as_uri()), folder="c")
    next(stream)  # listed, and the first file begun
    (folder / "tok" / "vocab.txt").unlink()  # gone between the listing and its read
    with pytest.raises(FileNotFoundError):
        b"".join(stream)
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(FileNotFoundError):
        b"".join(zip_stream(store, uris.parse(folder.as_uri()), folder="c"))
