"""A PostgreSQL database for the harness: embedded or given by URL, with read and write pools."""

from __future__ import annotations

import atexit
import logging
import threading
from importlib.resources import files
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from harness.embedded import EmbeddedServer
from harness.errors import SetupError
from harness.settings import Settings

log = logging.getLogger(__name__)

#: The seed's tables, emptied by ``reset()`` (harness_ tables included).
TABLES = ("oauth_auth_codes", "oauth_refresh_tokens", "oauth_clients", "users", "harness_ledger",
          "harness_ledger_attempts", "harness_ledger_workers")
CONNECT_TIMEOUT_S = 3
_MIGRATION_LOCK = 7_363_736  # pg_advisory_lock key: concurrent migrate() calls serialise


def describe_target(url: str) -> str:
    """``host:port/dbname`` (or the socket directory) of a URL, without the password."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def check_reachable(url: str, timeout: int = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds, naming the host, if ``url`` cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(
            f"cannot reach PostgreSQL at {describe_target(url)}: {first_line}"
        ) from exc


class Database:
    """A database with the seed's schema; ``read_pool`` / ``write_pool`` are the seed's two pools."""

    def __init__(
        self,
        url: str,
        *,
        embedded: EmbeddedServer | None = None,
        owns_server: bool = False,
        pool_size: int = 32,
    ) -> None:
        self.url = url
        self.embedded = embedded
        self.owns_server = owns_server
        self._pool_size = pool_size
        self._read_pool: ConnectionPool | None = None
        self._write_pool: ConnectionPool | None = None
        self._closed = False
        self._pool_lock = threading.Lock()
        if owns_server:
            atexit.register(self.close)

    @property
    def data_dir(self) -> Path | None:
        return self.embedded.data_dir if self.embedded else None

    def _pool(self, name: str) -> ConnectionPool:
        if self._closed:
            raise SetupError(f"{self!r} is closed")
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            name=name,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            open=False,
            timeout=30,
        )
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
        return pool

    @property
    def read_pool(self) -> ConnectionPool:
        """The seed's ``pool_ref()``: lookups."""
        with self._pool_lock:  # racers reach for the pool at the same instant
            if self._read_pool is None:
                self._read_pool = self._pool("read")
            return self._read_pool

    @property
    def write_pool(self) -> ConnectionPool:
        """The seed's ``write_pool_ref()``: inserts, claims, deletes."""
        with self._pool_lock:
            if self._write_pool is None:
                self._write_pool = self._pool("write")
            return self._write_pool

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new connection of its own (racers, tests), autocommit unless told otherwise."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        return psycopg.connect(self.url, **kwargs)

    def migrate(self) -> None:
        """Apply the schema; idempotent and safe to run from several processes at once."""
        ddl = files("harness").joinpath("schema.sql").read_text()
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                conn.execute(ddl.encode())
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))

    def reset(self) -> None:
        """Empty every table the harness uses."""
        with self.connect() as conn:
            conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE".encode())

    def ensure_party(self, client_id: str, user_id: str) -> None:
        """Insert the ``oauth_clients`` and ``users`` rows the foreign keys need."""
        with self.write_pool.connection() as conn:
            conn.execute(
                "INSERT INTO oauth_clients (client_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (client_id,),
            )
            conn.execute(
                "INSERT INTO users (id) VALUES (%s) ON CONFLICT DO NOTHING", (user_id,)
            )

    def close(self) -> None:
        """Close the pools; stop the embedded server if this object started it."""
        if self._closed:
            return
        self._closed = True
        for pool in (self._read_pool, self._write_pool):
            if pool is not None:
                pool.close()
        if self.owns_server and self.embedded is not None:
            self.embedded.stop()
            log.info("embedded PostgreSQL stopped (data kept in %s)", self.embedded.data_dir)

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"embedded in {self.data_dir}" if self.embedded else describe_target(self.url)
        return f"<Database {where}>"


def connect(
    url: str | None = None,
    *,
    data_dir: Path | str | None = None,
    migrate: bool = True,
    pool_size: int = 32,
) -> Database:
    """Open the harness database.

    ``url`` (or ``HARNESS_DATABASE_URL`` / ``DATABASE_URL``) names any PostgreSQL
    14+; with none, an embedded PostgreSQL is started in ``data_dir`` (default
    ``HARNESS_DATA_DIR`` or ``~/.claimcheck/pgdata``) and stopped again by
    ``close()`` if this call started it. The schema is applied unless
    ``migrate=False``.
    """
    settings = Settings.from_env()
    url = url or settings.database_url
    if url:
        check_reachable(url)
        db = Database(url, pool_size=pool_size)
    else:
        server = EmbeddedServer(Path(data_dir) if data_dir else settings.data_dir)
        server_url, started = server.start()
        db = Database(server_url, embedded=server, owns_server=started, pool_size=pool_size)
    if migrate:
        db.migrate()
    return db
