"""Deleting a run removes its own files from the artifact store (a local folder or an S3 bucket) once the delete has
committed, through a real Celery worker (training.remove_run_files), and never files another run or an export has:
a run that depends on it blocks the delete, rows and files alike, and a place holding another object's files is
kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from arbiter.accounts.models import User
from artifacts.models import ArtifactKind
from artifacts.services import register_artifact, run_uri
from tests.artifacts.conftest import S3Server
from training.models import Run, RunOrigin
from training.services import run_records
from training.services.run_records import delete_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def worker(celery_worker_app: Any) -> Any:
    """The worker that removes a deleted run's files (this process's settings: the test's artifact store)."""
    return celery_worker_app


def _until(done: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the worker did not remove the files in time"
        time.sleep(0.05)


def _run(owner: User, name: str) -> Run:
    return Run.objects.create(owner=owner, name=name, recipe="demo", status="succeeded")


def _local_run_with_files(owner: User, root: Path, name: str) -> tuple[Run, Path]:
    run = _run(owner, name)
    folder = root / "runs" / str(run.id)
    for rel in ("checkpoint-1/model.safetensors", "checkpoint-2/model.safetensors", "final/config.json"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"weights")
    run.checkpoints.create(step=1, path=str(folder / "checkpoint-1"))
    run.checkpoints.create(step=2, path=f"file://{folder}/checkpoint-2")
    register_artifact(owner=owner, kind=ArtifactKind.CHECKPOINT, uri=str(run_uri(run_id=run.id)), run=run)
    return run, folder


@pytest.fixture
def local_store(settings: Any, tmp_path: Path) -> Path:
    settings.ARTIFACT_STORE_URL = ""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return Path(settings.ARTIFACT_ROOT)


def test_deleting_a_run_on_its_page_removes_its_folder_after_the_commit_and_keeps_the_others(
    client_for: Any, researcher: User, local_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone, gone_folder = _local_run_with_files(researcher, local_store, "gone")
    kept, kept_folder = _local_run_with_files(researcher, local_store, "kept")
    with transaction.atomic():
        delete_run(run=gone, by=researcher)
        assert (gone_folder / "checkpoint-1").is_dir()  # not before the commit: a rollback must find its files
    _until(lambda: not gone_folder.exists())
    assert sorted(p.name for p in kept_folder.iterdir()) == ["checkpoint-1", "checkpoint-2", "final"]

    response = client_for(researcher).post(f"/runs/{kept.id}/delete/")
    assert response.status_code == 302 and not Run.objects.filter(id=kept.id).exists()
    _until(lambda: not kept_folder.exists())
    assert "broker did not take" not in caplog.text  # the worker removed them, not the request's fallback


def test_without_a_broker_the_files_are_removed_in_the_request(
    researcher: User, local_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refusing the task (down, unreachable) must not leave the files unsaid: they go in-process."""
    from kombu.exceptions import OperationalError

    from training.tasks import remove_run_files

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(remove_run_files, "delay", broker_down)
    run, folder = _local_run_with_files(researcher, local_store, "offline")
    delete_run(run=run, by=researcher)
    assert not folder.exists()


def test_a_place_that_another_object_moved_into_after_the_delete_is_kept(
    researcher: User, other_researcher: User, local_store: Path
) -> None:
    """The removal checks each place again when it runs: an export registered inside it since the delete keeps it."""
    run, folder = _local_run_with_files(researcher, local_store, "late")
    places = [str(p) for p in run_records.run_files(run)]
    run_id = run.id
    Run.objects.filter(id=run_id).delete()
    late = folder / "final" / "exported.jsonl"
    late.write_text("{}\n")
    register_artifact(owner=other_researcher, kind=ArtifactKind.DATASET, uri=str(late))
    assert run_records.remove_run_files_now(run_id=run_id, places=places) == []
    assert late.is_file()


def test_a_rolled_back_delete_keeps_the_files(researcher: User, local_store: Path) -> None:
    run, folder = _local_run_with_files(researcher, local_store, "kept")
    run_id = run.id  # Django clears the instance's id on delete
    with pytest.raises(RuntimeError), transaction.atomic():
        delete_run(run=run, by=researcher)
        raise RuntimeError("the request failed after the delete")
    assert Run.objects.filter(id=run_id).exists() and (folder / "final" / "config.json").is_file()


def test_a_refused_delete_keeps_rows_and_files(
    client_for: Any, researcher: User, other_researcher: User, local_store: Path
) -> None:
    base, folder = _local_run_with_files(researcher, local_store, "base")
    Run.objects.create(
        owner=researcher,
        name="base (resumed @2)",
        recipe="demo",
        status="failed",
        parent=base,
        origin=RunOrigin.RESUME,
        resume_checkpoint=base.checkpoints.get(step=2),
    )
    assert client_for(researcher).post(f"/runs/{base.id}/delete/").status_code == 409
    assert (folder / "checkpoint-2" / "model.safetensors").is_file()
    # Another researcher's run trains from the checkpoint: refused too, though the page cannot name it.
    other, other_folder = _local_run_with_files(researcher, local_store, "other")
    Run.objects.create(
        owner=other_researcher,
        name="secret",
        recipe="sft",
        status="succeeded",
        config={"model_name_or_path": str(other_folder / "checkpoint-1")},
    )
    assert client_for(researcher).post(f"/runs/{other.id}/delete/").status_code == 409
    assert (other_folder / "checkpoint-1" / "model.safetensors").is_file()


def test_a_location_holding_another_objects_files_is_kept(
    researcher: User, other_researcher: User, local_store: Path
) -> None:
    run, folder = _local_run_with_files(researcher, local_store, "run")
    export_file = folder / "exported.jsonl"  # an export (another object's artifact) written inside the location
    export_file.write_text("{}\n")
    register_artifact(owner=other_researcher, kind=ArtifactKind.DATASET, uri=str(export_file))
    delete_run(run=run, by=researcher)
    # Nothing of it is queued for removal (the folder holds another object's file); a later run's removal shows
    # the worker at work, and this folder is still whole.
    after, after_folder = _local_run_with_files(researcher, local_store, "after")
    delete_run(run=after, by=researcher)
    _until(lambda: not after_folder.exists())
    assert export_file.is_file() and (folder / "checkpoint-1" / "model.safetensors").is_file()


def test_deleting_a_run_removes_its_objects_from_the_bucket_and_keeps_the_others(
    s3_store: str, s3_server: S3Server, researcher: User, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3_store.removeprefix("s3://").split("/")[0]
    client = s3_server.client()
    runs = [_run(researcher, "gone"), _run(researcher, "kept")]
    for run in runs:
        for rel in ("checkpoint-1/model.safetensors", "checkpoint-1/config.json", "final/model.safetensors"):
            client.put_object(Bucket=bucket, Key=f"arbiter/runs/{run.id}/{rel}", Body=b"weights")
        run.checkpoints.create(step=1, path=f"{s3_store}/runs/{run.id}/checkpoint-1")
        register_artifact(owner=researcher, kind=ArtifactKind.CHECKPOINT, uri=f"{s3_store}/runs/{run.id}", run=run)
    gone, kept = runs[0].id, runs[1].id
    client.put_object(Bucket=bucket, Key=f"arbiter/runs/{gone}0/final/x", Body=b"a run whose id starts alike")

    delete_run(run=runs[0], by=researcher)

    def keys() -> list[str]:
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])

    _until(lambda: not any(k.startswith(f"arbiter/runs/{gone}/") for k in keys()))
    assert "broker did not take" not in caplog.text
    assert keys() == sorted(
        [
            f"arbiter/runs/{gone}0/final/x",
            *(
                f"arbiter/runs/{kept}/{rel}"
                for rel in ("checkpoint-1/config.json", "checkpoint-1/model.safetensors", "final/model.safetensors")
            ),
        ]
    )


def test_a_run_folder_replaced_by_a_symlink_loses_the_link_not_the_target(researcher: User, local_store: Path) -> None:
    """A run's code can write into its own folder on a shared local store: if it swaps its folder (or a checkpoint
    folder inside it, or one recorded elsewhere in the store) for a link to another run's folder or to uploads,
    deleting the run removes the link only."""
    import shutil

    _, victim_folder = _local_run_with_files(researcher, local_store, "victim")
    uploads = local_store / "uploads"
    uploads.mkdir()
    (uploads / "study.jsonl").write_bytes(b"{}")

    # 1. the whole run folder becomes a link to the victim's
    whole, whole_folder = _local_run_with_files(researcher, local_store, "whole")
    shutil.rmtree(whole_folder)
    whole_folder.symlink_to(victim_folder)
    delete_run(run=whole, by=researcher)
    _until(lambda: not whole_folder.is_symlink() and not whole_folder.exists())

    # 2. a reported checkpoint folder (inside the run's folder, and one recorded outside it) becomes a link
    inner, inner_folder = _local_run_with_files(researcher, local_store, "inner")
    shutil.rmtree(inner_folder / "checkpoint-1")
    (inner_folder / "checkpoint-1").symlink_to(uploads)
    old = local_store / "old-layout" / "checkpoint-9"
    old.parent.mkdir()
    old.symlink_to(victim_folder / "final")
    inner.checkpoints.create(step=9, path=str(old))
    delete_run(run=inner, by=researcher)
    _until(lambda: not inner_folder.exists() and not old.is_symlink())

    assert sorted(p.name for p in victim_folder.iterdir()) == ["checkpoint-1", "checkpoint-2", "final"]
    assert (victim_folder / "final" / "config.json").read_bytes() == b"weights"
    assert (uploads / "study.jsonl").read_bytes() == b"{}"
