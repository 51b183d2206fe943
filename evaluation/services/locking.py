"""The evaluation app's write transaction: atomic on PostgreSQL, plus the write lock at BEGIN on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction


@contextmanager
def write_transaction() -> Iterator[None]:
    """`transaction.atomic()`; on SQLite one that takes the database's write lock at BEGIN (BEGIN IMMEDIATE).

    SQLite has no row locks and no SKIP LOCKED: one lock serialises writers. A deferred
    transaction that reads, then writes, either acts on what it read while another writer
    commits in between, or (in WAL mode) fails at once with SQLITE_BUSY when it upgrades,
    without waiting out busy_timeout. Taking the lock at BEGIN makes each read-check-write
    (claim, submit, skip, release) one short serial step; concurrent writers wait their turn
    on busy_timeout. Inside a caller's transaction it is a savepoint of that transaction.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic():
            yield
        return
    connection.ensure_connection()
    default_mode = connection.transaction_mode  # type: ignore[attr-defined]
    connection.transaction_mode = "IMMEDIATE"  # type: ignore[attr-defined]  # read once, by the BEGIN
    try:
        with transaction.atomic():
            connection.transaction_mode = default_mode  # type: ignore[attr-defined]
            yield
    finally:
        connection.transaction_mode = default_mode  # type: ignore[attr-defined]
