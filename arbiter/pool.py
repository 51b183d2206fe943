"""The hand-out check of pooled PostgreSQL connections: a round trip only when the socket says something happened."""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool


def check_pooled_connection(conn: psycopg.Connection[Any]) -> None:
    """Raise if `conn` must not be handed out (the pool then discards it and takes another).

    An idle connection in good health has nothing to read. When the server ends a session (restart,
    pg_terminate_backend, idle timeout) it sends a FATAL message and closes the socket, which makes
    the socket readable; only then is the full check run (an empty query: one round trip), which
    raises for a dead connection and, for a live one, reads whatever harmless notice arrived.
    go-sql-driver/mysql checks pooled connections the same way (conncheck.go: a non-blocking read
    before reuse). The round trip on every checkout was the largest fixed cost of a short request:
    every page, ingest batch and websocket access check takes a connection from the pool.
    """
    if conn.closed:
        raise psycopg.OperationalError("the pooled connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)  # POLLHUP and POLLERR are always reported
    if poller.poll(0):
        ConnectionPool.check_connection(conn)
