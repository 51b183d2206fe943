"""Fixtures of the artifact tests: an S3-compatible server as a real process (moto's server mode), buckets in it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import free_port, wait_for_port
from tests.evaluation.conftest import make_study  # noqa: F401 - a fixture these tests use

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen[bytes]

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **{k.lower(): v for k, v in S3_ENV.items() if "KEY" in k})

    def new_bucket(self) -> str:
        name = f"arbiter-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free port: the same HTTP API as AWS S3 / MinIO, in its own process."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
        yield S3Server(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_store(s3_server: S3Server, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """This process configured for an S3 artifact store in a fresh bucket; returns the store's base URI."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ARTIFACT_S3_ENDPOINT_URL", s3_server.url)
    base = f"s3://{s3_server.new_bucket()}/arbiter"
    settings.ARTIFACT_STORE_URL = base
    settings.ARTIFACT_S3_ENDPOINT_URL = s3_server.url
    settings.ARTIFACT_ROOT = tmp_path / "scratch"
    settings.ARBITER_MODEL_ROOTS = []
    settings.ARBITER_DATASET_ROOTS = []
    return base
