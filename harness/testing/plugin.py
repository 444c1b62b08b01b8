"""pytest plugin: one real PostgreSQL per session, an emptied database per test.

Enable with ``-p harness.testing.plugin``. The server is ``HARNESS_DATABASE_URL``
when set, otherwise an embedded PostgreSQL in a temporary data directory,
started once and stopped at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.clock import ManualClock
from harness.database import Database, connect
from harness.repository import OAuthRepository
from harness.targets import load_target

TEST_PEPPER = "claimcheck-test-pepper"
CLIENT = "client-a"
OTHER_CLIENT = "client-b"
USER = "user-1"


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The session's database (embedded unless ``HARNESS_DATABASE_URL`` is set)."""
    url = os.environ.get("HARNESS_DATABASE_URL")
    data_dir = None if url else tmp_path_factory.mktemp("pg") / "data"
    db = connect(url, data_dir=data_dir)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def db(database: Database) -> Database:
    """The session database, emptied, with the two clients and the user the tests use."""
    database.reset()
    database.ensure_party(CLIENT, USER)
    database.ensure_party(OTHER_CLIENT, USER)
    return database


@pytest.fixture
def pepper() -> str:
    return TEST_PEPPER


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_target(db: Database, pepper: str, clock: ManualClock) -> Callable[..., OAuthRepository]:
    """``make_target(name="faithful", **options)`` over the test database and clock."""

    def make(name: str = "faithful", **options: Any) -> OAuthRepository:
        options.setdefault("pepper", pepper)
        options.setdefault("clock", clock)
        return load_target(name, db, **options)

    return make


@pytest.fixture
def faithful(make_target: Callable[..., OAuthRepository]) -> OAuthRepository:
    return make_target("faithful")
