"""The artifact store on an S3-compatible server (moto's server mode, a real process): bytes round-trip
exactly, exports live in the bucket, inputs resolve to local files on the worker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from arbiter.accounts.models import User
from artifacts import uris
from artifacts.localize import localize, localize_config
from artifacts.models import Artifact, ArtifactKind
from artifacts.services import default_store
from artifacts.store import S3Store
from evaluation import export
from evaluation.models import ExportJob
from tests.loop.conftest import judge
from training.services import runs

pytestmark = pytest.mark.django_db


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + os.urandom(n % 32)


def test_files_and_folders_round_trip_byte_for_byte(s3_store: str, tmp_path: Path) -> None:
    store = default_store()
    assert isinstance(store, S3Store)
    base = uris.parse(s3_store)
    folder = tmp_path / "checkpoint-5"
    (folder / "tokenizer").mkdir(parents=True)
    files = {"model.safetensors": payload(9 * 1024 * 1024 + 7), "config.json": b"{}", "tokenizer/vocab.txt": b"a\nb"}
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    stored = store.put_tree(folder, base.child("runs", "1", "checkpoint-5"))
    assert stored.size == sum(len(d) for d in files.values())
    assert sorted(store.list(base.child("runs", "1", "checkpoint-5"))) == sorted((k, len(v)) for k, v in files.items())
    back = store.get_tree(base.child("runs", "1", "checkpoint-5"), tmp_path / "back")
    assert {rel: (back / rel).read_bytes() for rel in files} == files
    one = store.put_file(folder / "model.safetensors", base.child("x.bin"))
    assert one.sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    signed = store.presigned_url(base.child("x.bin"), filename="x.bin")
    assert requests.get(signed, timeout=30).content == files["model.safetensors"]
    store.delete(base.child("runs", "1"))
    assert store.list(base.child("runs", "1")) == []
    with pytest.raises(uris.BadUri):
        store.put_file(folder / "config.json", uris.parse("s3://another-bucket/x"))  # never outside the store


def test_a_reward_export_lives_in_the_bucket_and_downloads_from_it(
    s3_store: str,
    researcher: User,
    other_researcher: User,
    annotator: User,
    make_study: Any,
    client_for: Any,
    settings: Any,
) -> None:
    study = make_study(kind="pairwise", n_items=3, annotators=[annotator])
    judge(study, annotator, ["a", "b", "tie"])
    queued = ExportJob.objects.create(study=study, requested_by=researcher, format="reward")
    job = export.run_export(export_id=queued.pk)
    assert job is not None
    assert job.path == f"{s3_store}/datasets/study-{study.pk}/v1/train.jsonl"
    store = default_store()
    with store.open(uris.parse(job.path)) as fh:
        data = fh.read()
    assert hashlib.sha256(data).hexdigest() == job.sha256
    assert store.exists(uris.parse(job.path.replace("train.jsonl", "manifest.json")))
    assert not any(Path(settings.ARTIFACT_ROOT).rglob("*.jsonl"))  # no copy left on the web host
    artifact = Artifact.objects.get(export=job)
    assert (artifact.kind, artifact.uri, artifact.size) == (ArtifactKind.DATASET, job.path, len(data))

    answer = client_for(researcher).get(f"/studies/{study.pk}/export/{job.pk}/download/")
    assert answer.status_code == 302
    assert requests.get(answer["Location"], timeout=30).content == data
    assert client_for(other_researcher).get(f"/studies/{study.pk}/export/{job.pk}/download/").status_code == 404

    # The owner trains on it by its URI; another researcher cannot, until the study is shared.
    trained = runs.launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path})
    with pytest.raises(Exception, match="Not a dataset you may use"):
        runs.launch_run(owner=other_researcher, recipe="dpo", config={"dataset_path": job.path})

    trained.delete()  # lineage protects an export a run trained on
    export.delete_export(job=ExportJob.objects.get(pk=job.pk, status="done"))
    assert store.list(uris.parse(job.path.rsplit("/", 1)[0])) == []


def test_inputs_resolve_to_local_copies_on_the_worker(s3_store: str, tmp_path: Path) -> None:
    store = default_store()
    base = uris.parse(s3_store)
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(b'{"x": 1}')
    store.put_file(data, base.child("datasets", "train.jsonl"))
    store.put_tree(model, base.child("runs", "3", "final"))
    cache = tmp_path / "cache"
    config = localize_config(
        {
            "dataset_path": f"{s3_store}/datasets/train.jsonl",
            "model_name_or_path": f"{s3_store}/runs/3/final",
            "ref_model_name_or_path": "org/name",
            "max_steps": 3,
        },
        store=store,
        cache=cache,
    )
    assert Path(config["dataset_path"]).read_bytes() == data.read_bytes()
    assert (Path(config["model_name_or_path"]) / "config.json").read_bytes() == b'{"x": 1}'
    assert (config["ref_model_name_or_path"], config["max_steps"]) == ("org/name", 3)
    again = localize(f"{s3_store}/datasets/train.jsonl", store=store, cache=cache)
    assert again == config["dataset_path"]  # downloaded once
    assert localize(f"file://{data}", store=store, cache=cache) == str(data)
