"""pytest plugin: one real PostgreSQL per session, a database the session created, emptied per test.

Enable with ``-p harness.testing.plugin``. By default the session starts an
embedded PostgreSQL in a temporary directory of its own and stops it at the
end. A server given by URL is used only on explicit opt-in
(``--harness-server-url URL`` or ``HARNESS_TEST_SERVER_URL``), and then only
inside a throwaway database the session creates there (``CREATE DATABASE``)
and drops at the end: the URL's own database is never written to.

``HARNESS_DATABASE_URL`` and ``DATABASE_URL`` are removed from the
environment for the session, so neither the tests nor the commands they
start can reach a database someone pointed them at for another purpose.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from harness.clock import ManualClock
from harness.database import Database, check_reachable, connect
from harness.errors import SetupError
from harness.redact import redact_url
from harness.repository import OAuthRepository
from harness.targets import load_target

TEST_PEPPER = "claimcheck-test-pepper"
CLIENT = "client-a"
OTHER_CLIENT = "client-b"
USER = "user-1"
SERVER_URL_ENV = "HARNESS_TEST_SERVER_URL"
_SCRUBBED = ("HARNESS_DATABASE_URL", "DATABASE_URL")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("claimcheck")
    group.addoption("--harness-server-url", default=None,
                    help="run the tests on this PostgreSQL server, in a throwaway database the session "
                         f"creates and drops (opt-in; also {SERVER_URL_ENV}). Default: an embedded server")


def pytest_configure(config: pytest.Config) -> None:
    scrubbed = {name: os.environ.pop(name) for name in _SCRUBBED if name in os.environ}
    config.stash[_scrubbed_key] = sorted(scrubbed)
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        # A base directory of this session's own: two suites on one machine (even as the same
        # user) never prune or reuse each other's temporary directories.
        base = Path(tempfile.mkdtemp(prefix="claimcheck-pytest-"))
        base.chmod(0o755)  # the embedded server's system user (under root) must traverse it
        config.option.basetemp = str(base / "t")
        config.stash[_base_key] = base


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_base_key, None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    scrubbed = config.stash.get(_scrubbed_key, [])
    url = config.getoption("--harness-server-url") or os.environ.get(SERVER_URL_ENV)
    lines = [f"claimcheck: database {'throwaway on ' + redact_url(url) if url else 'embedded, per session'}"]
    if scrubbed:
        lines.append(f"claimcheck: ignored {', '.join(scrubbed)} (tests never use them)")
    return lines


_scrubbed_key = pytest.StashKey[list[str]]()
_base_key = pytest.StashKey[Path]()


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """Create ``claimcheck_test_<random>`` on ``server_url``, yield its URL, drop it afterwards."""
    check_reachable(server_url)
    name = f"claimcheck_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise SetupError(f"cannot create a throwaway test database on {redact_url(server_url)}: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def new_data_dir(config: pytest.Config) -> Path:
    """A fresh path for an embedded cluster, under a directory this session created and removes.

    pytest makes its temporary directories 0700; under root the server runs
    as another user, which must traverse to its data directory, so clusters
    live beside them in a directory of the session's own (0755), never by
    loosening a directory someone else made.
    """
    base = config.stash.get(_base_key, None)
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="claimcheck-pytest-"))
        base.chmod(0o755)
        config.stash[_base_key] = base
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
    folder.chmod(0o755)
    return folder / "data"


@pytest.fixture
def pg_data_dir(request: pytest.FixtureRequest) -> Path:
    """A path for an embedded cluster of the test's own (not created yet)."""
    return new_data_dir(request.config)


@pytest.fixture(scope="session")
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The session's database: embedded (a temp data dir), or a throwaway one on an opted-in server."""
    server_url = request.config.getoption("--harness-server-url") or os.environ.get(SERVER_URL_ENV)
    if server_url:
        with throwaway_database(server_url) as url:
            db = connect(url, migrate=True)
            db.owned = True  # created by this session, dropped at its end
            try:
                yield db
            finally:
                db.close()
        return
    db = connect(data_dir=new_data_dir(request.config))
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
        target: OAuthRepository = load_target(name, db, **options)
        return target

    return make


@pytest.fixture
def faithful(make_target: Callable[..., OAuthRepository]) -> OAuthRepository:
    return make_target("faithful")
