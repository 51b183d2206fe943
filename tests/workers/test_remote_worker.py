"""Issue 11 as a deployment: a Django-free worker process (its own cwd and empty ARTIFACT_ROOT, no DATABASE_URL)
runs a run launched on the web tier; every checkpoint byte lands in the S3-compatible bucket."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
import requests
from django.test import Client

from arbiter.accounts.models import User
from artifacts import uris
from artifacts.services import default_store
from evaluation import export
from evaluation.models import ExportJob
from loop.models import RunInput
from tests.loop.conftest import judge
from tests.training.conftest import wait_status
from training.models import MetricSummary, RunStatus
from training.services import runs
from workers.models import WorkerCredential

pytestmark = pytest.mark.django_db(transaction=True)

DEMO = {"max_steps": 6, "step_delay_s": 0.0, "save_steps": 3, "logging_steps": 1, "num_threads": 1}


def test_a_run_on_a_django_free_worker_reports_and_stores_its_checkpoints_in_the_bucket(
    deployment: Any, researcher: User
) -> None:
    worker = deployment.start_worker(name="gpu-host-1")
    run = runs.launch_run(owner=researcher, recipe="demo", config=DEMO, name="remote", queue=deployment.queue)
    run = wait_status(run, {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.LOST}, timeout=240)
    logs = list(run.log_lines.values_list("text", flat=True))
    log_file = (deployment.root / "gpu-host-1.log").read_text(errors="replace")[-3000:]
    assert run.status == RunStatus.SUCCEEDED, (logs[-20:], log_file)
    assert run.worker == "gpu-host-1" and worker.poll() is None
    assert WorkerCredential.objects.get(name="gpu-host-1").slots == ["cpu0"]
    assert any("engine exited with code 0" in line for line in logs)  # the worker's captured output arrived
    assert MetricSummary.objects.filter(run=run, key__name="loss", n=6).exists()  # the engine reported directly

    checkpoints = list(run.checkpoints.order_by("step").values_list("step", "path"))
    assert [s for s, _ in checkpoints] == [3, 6]
    store = default_store()
    for _, path in checkpoints:
        assert path.startswith(f"{deployment.store}/runs/{run.id}/checkpoint-")
        files = dict(store.list(uris.parse(path)))
        assert "model.safetensors" in files or any(name.endswith(".safetensors") for name in files), files
    assert dict(store.list(uris.parse(f"{deployment.store}/runs/{run.id}/final")))  # the final model too
    # The worker kept nothing of the run once it was in the bucket (its scratch is not a store).
    scratch = deployment.root / "gpu-host-1" / "scratch"
    assert not list(scratch.rglob("*.safetensors"))
    assert not list((deployment.root / "gpu-host-1" / "cwd").iterdir())  # nothing written where it was started
    with store.open(uris.parse(checkpoints[-1][1]).child("config.json")) as fh:
        assert json.loads(fh.read())["model_type"]  # a Hugging Face folder, readable from the bucket


def test_study_export_to_dpo_run_to_checkpoint_download_with_every_byte_in_the_bucket(
    deployment: Any, researcher: User, annotator: User, make_study: Any
) -> None:
    """The loop across hosts: a study's reward export is written to the bucket, a DPO run on the remote worker
    trains on it (downloaded into the worker's scratch), its checkpoints go up to the bucket, and the run page's
    checkpoint link downloads them from the web server."""
    deployment.start_worker(name="gpu-host-2")
    study = make_study(kind="pairwise", n_items=4, annotators=[annotator])
    judge(study, annotator, ["a", "b", "a", "b"])
    job = export.run_export(
        export_id=ExportJob.objects.create(study=study, requested_by=researcher, format="reward").pk
    )
    assert job is not None and job.path.startswith(f"{deployment.store}/datasets/")
    run = runs.launch_run(
        owner=researcher,
        recipe="dpo",
        config={"dataset_path": job.path, "max_steps": 2, "batch_size": 2, "save_steps": 2, "num_threads": 1},
        queue=deployment.queue,
    )
    run = wait_status(run, {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.LOST}, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, list(run.log_lines.values_list("text", flat=True))[-20:]
    checkpoint = run.checkpoints.get(step=2)
    assert checkpoint.path == f"{deployment.store}/runs/{run.id}/checkpoint-2"
    assert RunInput.objects.get(run=run).export_id == job.pk  # lineage holds across the bucket

    browser = Client()
    browser.force_login(researcher)
    page = requests.get(
        f"{deployment.web_url}/runs/{run.id}/", cookies={"sessionid": browser.cookies["sessionid"].value}, timeout=30
    )
    link = f"/artifacts/checkpoints/{checkpoint.id}/download/"
    assert link in page.text
    answer = requests.get(
        deployment.web_url + link, cookies={"sessionid": browser.cookies["sessionid"].value}, timeout=120
    )
    assert answer.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    store = default_store()
    base = uris.parse(checkpoint.path)
    in_bucket = dict(store.list(base))
    assert {n.split("/", 1)[1] for n in archive.namelist()} == set(in_bucket)
    for name in archive.namelist():
        rel = name.split("/", 1)[1]
        with store.open(base.child(rel)) as fh:
            assert archive.read(name) == fh.read(), rel
