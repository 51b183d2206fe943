"""A database outage mid-ingest loses nothing: the server answers 5xx, the client retries, every point lands once.

PostgreSQL is not restarted (the suite shares it); instead every session of the web server process on the test
database is killed repeatedly while a run reports — to the server that is what a database restart looks like.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection

import arbiter_client
from arbiter.accounts.models import User
from tests.conftest import current_database_url
from training.selectors import stored_points
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


def _kill_server_connections(stop: threading.Event, kills: list[int]) -> None:
    """Terminate the web server's sessions on the test database, a few times a second, until told to stop."""
    admin_url = current_database_url().rsplit("/", 1)[0].replace("postgres://", "postgresql://", 1) + "/postgres"
    name = connection.settings_dict["NAME"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        while not stop.is_set():
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'arbiter-test-server'",
                [name],
            ).fetchall()
            kills.append(len(rows))
            time.sleep(0.15)


def test_points_survive_the_database_dropping_every_connection(asgi_server: Any, researcher: User) -> None:
    run_record, token = runs.create_external_run(owner=researcher, name="db-outage", config={})
    client = arbiter_client.Run(
        url=asgi_server.url,
        run_id=run_record.id,
        token=token,
        owns_status=False,
        flush_interval=0.02,
        max_batch=500,
        system_interval=0,
    )
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_server_connections, args=(stop, kills), daemon=True)
    killer.start()
    try:
        for step in range(3000):
            client.log({"loss": 1.0 / (step + 1), "reward": step * 0.001}, step=step)
            if step % 100 == 0:
                time.sleep(0.05)  # spread the batches over several kills
    finally:
        time.sleep(0.5)
        stop.set()
        killer.join(timeout=10)
    assert client.finish(timeout=120), client.stats
    assert sum(kills) > 0, "the outage never hit a server connection"
    # Whether a batch failed (and was retried) or the pool's checkout check replaced the dead connection
    # first depends on timing; either way nothing may be lost or doubled.
    assert stored_points(run_id=run_record.id) == 6000
