"""Chromium: the run page's checkpoint link downloads the checkpoint as a zip holding its files byte for byte."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from arbiter.accounts.models import User
from training.models import Run, RunStatus
from training.services import ingest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def test_the_run_pages_checkpoint_link_downloads_its_files(
    page: Any, asgi_server: Any, login_page: Any, researcher: User, tmp_path: Path
) -> None:
    run = Run.objects.create(owner=researcher, name="download me", recipe="demo", status=RunStatus.SUCCEEDED)
    # The live server's store is the session's ARTIFACT_ROOT: the checkpoint is written there, as a run would.
    folder = Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / "checkpoint-4"
    files = {"model.safetensors": os.urandom(1 << 20), "config.json": b'{"model_type": "llama"}'}
    shutil.rmtree(folder, ignore_errors=True)  # run ids restart with each test database
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    ingest.record_checkpoint(run=run, step=4, path=str(folder))

    login_page(page, asgi_server.url, researcher)
    page.goto(f"{asgi_server.url}/runs/{run.id}/")
    try:
        with page.expect_download() as download_info:
            page.click("#checkpoint-download")
        download = download_info.value
        assert download.suggested_filename == f"run-{run.id}-checkpoint-4.zip"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)  # waits for the whole download: the zip is streamed from the files as it goes
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    with zipfile.ZipFile(saved) as archive:
        got = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    assert got == files
