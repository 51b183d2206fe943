"""Pooled PostgreSQL connections: one the server ended is never handed out, without a round trip per checkout."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests
from django.db import connection

from arbiter.server import web_server_command
from tests.conftest import ROOT, current_database_url, free_port, platform_env, wait_for_port

pytestmark = pytest.mark.django_db(transaction=True)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(current_database_url().replace("postgres://", "postgresql://", 1), autocommit=True)


def _terminate(pid: int) -> None:
    with _admin() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the backend did not exit"
            time.sleep(0.02)


def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout() -> None:
    if connection.vendor != "postgresql" or not connection.settings_dict["OPTIONS"].get("pool"):
        pytest.skip("PostgreSQL with the connection pool only")
    connection.ensure_connection()
    ended = connection.connection.info.backend_pid
    connection.close()  # back to the pool, idle
    _terminate(ended)  # what a database restart does to every idle pooled connection
    for _ in range(3):  # the pool may hold more than one; none handed out is dead
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] != ended
        connection.close()


def test_a_healthy_pooled_connection_is_handed_out_without_a_query() -> None:
    if connection.vendor != "postgresql" or not connection.settings_dict["OPTIONS"].get("pool"):
        pytest.skip("PostgreSQL with the connection pool only")
    connection.ensure_connection()
    connection.close()  # at least one idle connection in the pool
    sql = "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with _admin() as admin:
        before = dict(admin.execute(sql).fetchall())
        connection.ensure_connection()  # checkout: the hand-out check runs here
        pid = connection.connection.info.backend_pid
        after = dict(admin.execute(sql).fetchall())
    assert pid in before
    assert after[pid] == before[pid]  # no statement reached the server


def test_without_the_pool_a_server_keeps_no_connection_open_between_requests(tmp_path: Path) -> None:
    """DATABASE_POOL_MAX_SIZE=0 (PgBouncer in front, say) under the production settings: each request's thread
    closes its connection when the request ends, as Django advises under ASGI. With persistent per-thread
    connections, every request thread the server keeps would hold one open while idle (up to 32 a process)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    port, name = free_port(), "arbiter-test-poolless"
    env = platform_env(DJANGO_SETTINGS_MODULE="arbiter.settings", DATABASE_POOL_MAX_SIZE="0", PGAPPNAME=name)
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            web_server_command(host="127.0.0.1", port=port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, proc)

        def ask(_: int) -> int:  # a key of the right shape is looked up in the database
            headers = {"Authorization": "Bearer arb_u_not-a-key"}
            return requests.get(f"http://127.0.0.1:{port}/api/runs/", headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(ask, range(64))) == {401}
        sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        with _admin() as admin:
            deadline = time.monotonic() + 5
            while (held := admin.execute(sql, [name]).fetchone()[0]) and time.monotonic() < deadline:  # type: ignore[index]
                time.sleep(0.05)
        assert held == 0, f"{held} connections held open by idle request threads"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
