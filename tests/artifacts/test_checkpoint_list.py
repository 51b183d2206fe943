"""The run page lists every checkpoint (step, time, size, download), newest first, 20 to a page; the links go through
the access-checked download route, so another researcher gets 404 on each of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from arbiter.accounts.models import User
from artifacts.models import Artifact
from training.models import Run
from training.services.ingest import record_checkpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_with_checkpoints(researcher: User, settings: Any, tmp_path: Path) -> Run:
    settings.ARTIFACT_STORE_URL = ""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    run = Run.objects.create(owner=researcher, name="long", recipe="demo", status="succeeded")
    for step in range(1, 26):
        folder = Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / f"checkpoint-{step * 10}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w" * (1000 * step))
        record_checkpoint(run=run, step=step * 10, path=str(folder))
    return run


def _rows(html: str) -> list[tuple[int, str]]:
    """(step, download link) of each listed checkpoint that has a link."""
    rows = re.findall(r'<tr data-step="(\d+)">(.*?)</tr>', html, re.S)
    return [(int(step), m.group(1)) for step, cells in rows if (m := re.search(r'href="([^"]+)"', cells))]


def test_every_checkpoint_is_listed_newest_first_a_page_at_a_time(
    client_for: Any, researcher: User, run_with_checkpoints: Run
) -> None:
    run = run_with_checkpoints
    client = client_for(researcher)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert f'hx-get="/runs/{run.id}/checkpoints/"' in page
    first = client.get(f"/runs/{run.id}/checkpoints/")
    html = first.content.decode()
    assert first.status_code == 200 and "25 checkpoints" in html and "page 1 of 2" in html
    rows = _rows(html)
    assert [step for step, _ in rows] == list(range(250, 50, -10))  # 20, newest first
    assert "24.4\xa0KB" in html  # 25,000 bytes, measured when the checkpoint was reported
    assert Artifact.objects.get(uri__endswith=f"/runs/{run.id}/checkpoint-250").size == 25_000
    second = _rows(client.get(f"/runs/{run.id}/checkpoints/", {"page": 2}).content.decode())
    assert [step for step, _ in second] == [50, 40, 30, 20, 10]
    assert _rows(client.get(f"/runs/{run.id}/checkpoints/", {"page": "x"}).content.decode()) == rows
    assert [s for s, _ in _rows(client.get(f"/runs/{run.id}/checkpoints/", {"page": 99}).content.decode())] == [
        50,
        40,
        30,
        20,
        10,
    ]
    download = client.get(rows[0][1])
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert b"".join(download).startswith(b"PK")


def test_another_researcher_gets_404_on_the_list_and_on_every_link(
    client_for: Any, researcher: User, other_researcher: User, run_with_checkpoints: Run
) -> None:
    run = run_with_checkpoints
    links = [href for _, href in _rows(client_for(researcher).get(f"/runs/{run.id}/checkpoints/").content.decode())]
    assert len(links) == 20
    outsider = client_for(other_researcher)
    assert outsider.get(f"/runs/{run.id}/checkpoints/").status_code == 404
    assert {outsider.get(href).status_code for href in links} == {404}


def test_a_checkpoint_whose_files_are_gone_has_no_link(
    client_for: Any, researcher: User, run_with_checkpoints: Run, settings: Any
) -> None:
    run = run_with_checkpoints
    gone = Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / "checkpoint-250"
    for f in gone.iterdir():
        f.unlink()
    Artifact.objects.filter(uri__endswith=f"/runs/{run.id}/checkpoint-250").update(size=0)  # as for an old row
    html = client_for(researcher).get(f"/runs/{run.id}/checkpoints/").content.decode()
    assert _rows(html)[0][0] == 240 and 'data-step="250"' in html
