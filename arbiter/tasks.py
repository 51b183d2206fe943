"""Project-level Celery tasks: a ping that proves broker, worker and result backend work end to end."""

from __future__ import annotations

import socket

from celery import shared_task

from arbiter.celery import Queue


@shared_task(name="arbiter.ping", queue=Queue.DEFAULT, ignore_result=False, time_limit=30)
def ping(value: str) -> dict[str, str]:
    """Answer with the value and the worker's host: used by health checks and the test suite."""
    return {"pong": value, "host": socket.gethostname()}
