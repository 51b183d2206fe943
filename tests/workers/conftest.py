"""A deployment on one machine: an S3-compatible server, a web server and Django-free GPU workers, each its own
process. A worker gets only the broker URL, the API URL, its token and slots: its own empty ARTIFACT_ROOT, its own
working directory, no DATABASE_URL, no Django settings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from arbiter.server import web_server_command
from tests.artifacts.conftest import S3_ENV, S3Server, s3_server  # noqa: F401 - the session's S3 server
from tests.conftest import ROOT, free_port, platform_env, wait_for_port
from tests.evaluation.conftest import make_study  # noqa: F401 - a fixture the deployment tests use
from workers.services import issue_worker_credential


@dataclass
class Deployment:
    web_url: str
    store: str
    queue: str
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    start_worker: Callable[..., subprocess.Popen[bytes]] = lambda **_: None  # type: ignore[assignment,return-value]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def deployment(
    s3_server: S3Server,  # noqa: F811
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    transactional_db: None,
) -> Iterator[Deployment]:
    store = f"s3://{s3_server.new_bucket()}/arbiter"
    queue = f"gpu-{uuid.uuid4().hex[:8]}"  # this test's workers alone consume it
    s3 = {**S3_ENV, "ARTIFACT_S3_ENDPOINT_URL": s3_server.url}
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    # This process launches runs (the launch check reads the same store settings the web server has).
    settings.ARTIFACT_STORE_URL = store
    settings.ARTIFACT_S3_ENDPOINT_URL = s3_server.url
    settings.ARTIFACT_ROOT = tmp_path / "web-artifacts"
    settings.ARBITER_RUN_QUEUES = [queue]
    port = free_port()
    web_log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        web_server_command(host="127.0.0.1", port=port),
        cwd=ROOT,
        env=platform_env(
            ARBITER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            ARTIFACT_STORE_URL=store,
            ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
            ARBITER_RUN_QUEUES=queue,
            **s3,
        ),
        stdout=web_log,
        stderr=subprocess.STDOUT,
    )
    dep = Deployment(web_url=f"http://127.0.0.1:{port}", store=store, queue=queue, root=tmp_path, procs=[web])

    def start_worker(*, name: str, slots: str = "cpu0", queue: str = queue) -> subprocess.Popen[bytes]:
        _, token = issue_worker_credential(name=name)
        home = tmp_path / name
        (home / "cwd").mkdir(parents=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),  # the code, not a configuration: no settings, no database
            "ARBITER_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "ARBITER_API_URL": dep.web_url,
            "ARBITER_WORKER_TOKEN": token,
            "ARBITER_WORKER_NAME": name,
            "ARBITER_WORKER_SLOTS": slots,
            "ARBITER_WORKER_QUEUES": queue,
            "ARTIFACT_ROOT": str(home / "scratch"),
            "OMP_NUM_THREADS": "1",
            **s3,
        }
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "arbiter_worker"], cwd=home / "cwd", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        dep.procs.append(proc)
        dep.workers[name] = proc
        return proc

    dep.start_worker = start_worker
    try:
        wait_for_port(port, web)
        yield dep
    finally:
        for proc in reversed(dep.procs):
            _stop(proc)
        web_log.close()
