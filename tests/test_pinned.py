"""``PinnedConnections``: one connection per thread, kept; replaced after a fault, never before."""

from __future__ import annotations

import threading

import psycopg
import pytest

from harness.database import Database, PinnedConnections
from harness.errors import SetupError


def _pid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_each_thread_keeps_its_own_connection(database: Database) -> None:
    pinned = PinnedConnections(database.url)
    try:
        with pinned.connection() as conn:
            first = _pid(conn)
        with pinned.connection() as conn:
            assert _pid(conn) == first  # the same backend: no checkout, no health check
        seen: list[int] = []

        def other() -> None:
            with pinned.connection() as conn:
                seen.append(_pid(conn))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(10)
        assert seen and seen[0] != first  # another thread, another connection
    finally:
        pinned.close()


def test_a_killed_backend_fails_its_attempt_and_is_replaced_at_the_next_checkout(
        database: Database) -> None:
    pinned = PinnedConnections(database.url)
    try:
        with pinned.connection() as conn:
            victim = _pid(conn)
        with database.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        # The attempt that meets the fault fails, as a real client's would: no silent retry.
        with pytest.raises(psycopg.OperationalError), pinned.connection() as conn:
            conn.execute("SELECT 1")
        with pinned.connection() as conn:
            assert _pid(conn) != victim
    finally:
        pinned.close()


def test_a_transaction_left_open_is_rolled_back_on_return(database: Database) -> None:
    pinned = PinnedConnections(database.url)
    try:
        with pinned.connection() as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        pinned.close()


def test_close_closes_every_connection_and_refuses_new_ones(database: Database) -> None:
    db = Database(database.url, pinned=True)
    assert db.read_pool is db.write_pool  # one connection per thread serves both of the seed's pools
    with db.write_pool.connection() as conn:
        pass
    db.close()
    assert conn.closed
    with pytest.raises(SetupError), db.read_pool.connection():
        pass
