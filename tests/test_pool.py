"""Pooled PostgreSQL connections: one the server ended is never handed out, without a round trip per checkout."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

from tests.conftest import current_database_url

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
