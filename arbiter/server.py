"""The one command line that serves arbiter.asgi: used by `runplatform`, the tests' live server and bench/."""

from __future__ import annotations

import sys


def web_server_command(*, host: str, port: int, workers: int = 1, app: str | None = None) -> list[str]:
    """uvicorn with uvloop + httptools: measured 8-16% faster than daphne on the annotator loop.

    `workers` > 1 is uvicorn's own pre-fork supervisor, as docker/Dockerfile runs it (WEB_WORKERS);
    `runplatform` serves with one process (its channel layer may be in-memory). `app`: another ASGI
    application under the same command line (bench/annotation_floor.py's, to measure the machine's limit).
    """
    command = [
        sys.executable, "-m", "uvicorn", app or "arbiter.asgi:application",
        "--host", host, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log",
    ]  # fmt: skip
    if workers > 1:
        command += ["--workers", str(workers)]
    return command
