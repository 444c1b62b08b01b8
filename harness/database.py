"""A PostgreSQL database for the harness: embedded or given by URL, with read and write pools."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.resources import files
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from harness.embedded import EmbeddedServer
from harness.errors import SetupError
from harness.redact import redact_url
from harness.settings import Settings

log = logging.getLogger(__name__)

#: The seed's tables and the harness's own, as ``migrate()`` creates them: column → data type.
SCHEMA: dict[str, dict[str, str]] = {
    "users": {"id": "text"},
    "oauth_clients": {"client_id": "text", "client_secret_hash": "text"},
    "oauth_refresh_tokens": {
        "token_id": "text", "client_id": "text", "user_id": "text", "scope": "text",
        "resource": "text", "expires_at": "timestamp with time zone",
        "created_at": "timestamp with time zone", "family_id": "text",
        "consumed_at": "timestamp with time zone",
    },
    "oauth_auth_codes": {
        "code": "text", "client_id": "text", "user_id": "text", "redirect_uri": "text",
        "scope": "text", "expires_at": "timestamp with time zone",
        "used_at": "timestamp with time zone", "code_challenge": "text",
        "code_challenge_method": "text", "resource": "text", "refresh_token_id": "text",
        "created_at": "timestamp with time zone",
    },
}
LEDGER_SCHEMA: dict[str, dict[str, str]] = {
    "harness_ledger": {"run_id": "text", "code_index": "bigint", "code_hash": "text", "winner": "text"},
    "harness_ledger_attempts": {"run_id": "text", "worker": "text", "racer": "text",
                                "code_index": "bigint", "outcome": "text"},
    "harness_ledger_workers": {"run_id": "text", "worker": "text", "state": "text"},
}
#: The tables ``reset()`` empties (only on a database the harness created).
TABLES = ("oauth_auth_codes", "oauth_refresh_tokens", "oauth_clients", "users", "harness_ledger",
          "harness_ledger_attempts", "harness_ledger_workers")
CONNECT_TIMEOUT_S = 3
#: How long a request waits for a pooled connection: short, so a lost database fails fast (a 503
#: within seconds, not a request hanging for half a minute).
POOL_TIMEOUT_S = 2.0
_MIGRATION_LOCK = 7_363_736  # pg_advisory_lock key: concurrent migrate() calls serialise
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def describe_target(url: str) -> str:
    """``host:port/dbname`` (or the socket directory) of a URL, without the password."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_reachable(url: str, timeout: int = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds, naming the host, if ``url`` cannot be reached."""
    try:
        conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise SetupError(f"the database URL cannot be parsed: {_first_line(exc)}") from None
    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise SetupError(
            f"cannot reach PostgreSQL at {describe_target(url)}: {_first_line(exc)}"
        ) from None


def schema_problems(conn: psycopg.Connection[Any], *, ledger: bool = False) -> list[str]:
    """What keeps the harness from using this database: missing tables or columns, wrong types, privileges.

    Read-only (``information_schema`` and ``has_table_privilege``); empty means usable.
    """
    wanted = {**SCHEMA, **(LEDGER_SCHEMA if ledger else {})}
    found: dict[str, dict[str, str]] = {}
    for table, column, data_type in conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ANY(%s)", (list(wanted),)
    ):
        found.setdefault(table, {})[column] = data_type
    problems: list[str] = []
    missing = [t for t in wanted if t not in found]
    if missing:
        problems.append(f"missing tables: {', '.join(missing)}")
    for table, columns in wanted.items():
        have = found.get(table)
        if have is None:
            continue
        for column, data_type in columns.items():
            if column not in have:
                problems.append(f"{table}.{column} is missing")
            elif have[column] != data_type:
                problems.append(f"{table}.{column} is {have[column]}, claimcheck needs {data_type}")
        lacking = [p for p in _PRIVILEGES if not conn.execute(
            "SELECT has_table_privilege(%s, %s)", (table, p)).fetchone()[0]]  # type: ignore[index]
        if lacking:
            problems.append(f"no {'/'.join(lacking)} privilege on {table}")
    return problems


def schema_statements() -> list[str]:
    """``schema.sql`` as single statements, indexes built ``CONCURRENTLY`` (no write lock on a live table)."""
    ddl = files("harness").joinpath("schema.sql").read_text()
    text = "\n".join(line.split("--", 1)[0] for line in ddl.splitlines())
    statements = [" ".join(part.split()) for part in text.split(";") if part.strip()]
    return [stmt.replace("CREATE INDEX IF NOT EXISTS", "CREATE INDEX CONCURRENTLY IF NOT EXISTS")
            for stmt in statements]


class Pool(Protocol):
    """What the targets draw connections from: a ``psycopg_pool.ConnectionPool`` or ``PinnedConnections``."""

    def connection(self, timeout: float | None = None) -> AbstractContextManager[psycopg.Connection[Any]]:
        ...


class PinnedConnections:
    """One connection per thread (or greenlet), kept for the thread's life: a pgbench client's.

    For racers and benchmark clients, which each run one call at a time for a whole run: drawing a
    connection from ``psycopg_pool`` and returning it costs more client CPU than the short statement
    it carries (locks, a health-check round trip), and on 2 cores that CPU is taken from the server
    being measured. Offers the one method the targets use, ``connection()``. A connection that is
    closed or broken (a terminated backend) is replaced at the next checkout, not before: the
    attempt that met the fault fails as a real client's would.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self._timeout = connect_timeout_s
        self._local = threading.local()  # greenlet-local once gevent has patched threading
        self._lock = threading.Lock()
        self._all: list[psycopg.Connection[Any]] = []
        self._closed = False

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if self._closed:
                raise SetupError("the connections are closed")
            conn = psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, round(timeout or self._timeout)))
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            # As psycopg_pool does on return: never hand on a connection inside a transaction.
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()

    def close(self, timeout: float | None = None) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class Database:
    """A database with the seed's schema; ``read_pool`` / ``write_pool`` are the seed's two pools.

    ``owned`` says whether the harness created this database (the embedded
    cluster, or a throwaway test database): only then may it create its
    schema unasked or empty tables (``reset()``). Anywhere else it writes
    only the rows a run creates, and removes them (``harness.scope``).
    """

    def __init__(
        self,
        url: str,
        *,
        embedded: EmbeddedServer | None = None,
        owns_server: bool = False,
        owned: bool = False,
        pool_size: int = 32,
        pool_timeout_s: float = POOL_TIMEOUT_S,
        check_on_checkout: bool = True,
        pinned: bool = False,
    ) -> None:
        self.url = url
        self.embedded = embedded
        self.owns_server = owns_server
        self.owned = owned or embedded is not None
        self._pool_size = pool_size
        self._pool_timeout_s = pool_timeout_s
        self._check_on_checkout = check_on_checkout
        #: ``pinned``: both pools are one ``PinnedConnections`` (one connection per thread).
        self._pinned = PinnedConnections(url) if pinned else None
        self._read_pool: ConnectionPool | None = None
        self._write_pool: ConnectionPool | None = None
        self._closed = False
        self._pool_lock = threading.Lock()
        self._lease: Any = None
        if embedded is not None:
            atexit.register(self.close)

    @property
    def data_dir(self) -> Path | None:
        return self.embedded.data_dir if self.embedded else None

    @property
    def safe_url(self) -> str:
        """The URL with its password redacted: what may be printed or written."""
        return redact_url(self.url)

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
            timeout=self._pool_timeout_s,
            # A connection that died while idle (server restart, terminated backend) is
            # replaced on checkout instead of failing the request that drew it.
            check=ConnectionPool.check_connection if self._check_on_checkout else None,
            # Give up a failed reconnection quickly: while a backoff is pending no request gets a
            # new connection, so a database that came back would go on failing requests.
            reconnect_timeout=max(self._pool_timeout_s, POOL_TIMEOUT_S),
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
        except Exception as exc:
            pool.close()
            raise SetupError(f"cannot open a connection pool to {describe_target(self.url)}: "
                             f"{_first_line(exc)}") from None
        return pool

    @property
    def read_pool(self) -> Pool:
        """The seed's ``pool_ref()``: lookups."""
        if self._pinned is not None:
            return self._pinned
        with self._pool_lock:  # racers reach for the pool at the same instant
            if self._read_pool is None:
                self._read_pool = self._pool("read")
            return self._read_pool

    @property
    def write_pool(self) -> Pool:
        """The seed's ``write_pool_ref()``: inserts, claims, deletes."""
        if self._pinned is not None:
            return self._pinned
        with self._pool_lock:
            if self._write_pool is None:
                self._write_pool = self._pool("write")
            return self._write_pool

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new connection of its own (racers, tests), autocommit unless told otherwise."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        return psycopg.connect(self.url, **kwargs)

    def problems(self, *, ledger: bool = False) -> list[str]:
        """What keeps the harness from using this database (``schema_problems``); empty = usable."""
        with self.connect() as conn:
            return schema_problems(conn, ledger=ledger)

    def verify(self, *, ledger: bool = False) -> None:
        """Raise one clear ``SetupError`` if the schema is missing, different, or not writable."""
        try:
            problems = self.problems(ledger=ledger)
        except psycopg.Error as exc:
            raise SetupError(f"cannot read the schema of {describe_target(self.url)}: "
                             f"{_first_line(exc)}") from None
        if problems:
            hint = ("create it with: harness db migrate" if any(p.startswith("missing") for p in problems)
                    else "claimcheck cannot use this schema as it is")
            raise SetupError(f"the database {describe_target(self.url)} is not ready for claimcheck: "
                             f"{'; '.join(problems[:4])} ({hint})")

    def migrate(self) -> list[str]:
        """Create what is missing of the schema, online; idempotent and safe from several processes at once.

        Existing tables are never altered: a table of the same name with
        other column types is reported (``SetupError``), not changed. Indexes
        are built ``CONCURRENTLY``, so a live table is never locked against
        writes. Returns the statements that were run.
        """
        with self.connect() as conn:
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
                try:
                    clashes = [p for p in schema_problems(conn, ledger=True)
                               if " is " in p and "needs" in p]
                    if clashes:
                        raise SetupError(f"the database {describe_target(self.url)} has tables of the "
                                         f"same names with other columns: {'; '.join(clashes[:4])}; "
                                         "nothing was changed")
                    statements = schema_statements()
                    for statement in statements:
                        conn.execute(statement.encode())
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
            except psycopg.Error as exc:
                raise SetupError(f"cannot create the schema in {describe_target(self.url)}: "
                                 f"{_first_line(exc)}") from None
        return statements

    def reset(self) -> None:
        """Empty every table the harness uses: only in a database the harness created, never CASCADE.

        On any other database this refuses (``SetupError``): the tables there
        hold rows the harness did not write. A table of someone else's that
        references these makes ``TRUNCATE`` fail; that is reported, not forced.
        """
        if not self.owned:
            raise SetupError(f"reset() refused: {describe_target(self.url)} was not created by the "
                             "harness, and emptying its tables would delete rows the harness did not "
                             "write")
        try:
            with self.connect() as conn:
                conn.execute(f"TRUNCATE {', '.join(TABLES)}".encode())
        except psycopg.Error as exc:
            raise SetupError(f"reset() failed (nothing was deleted): {_first_line(exc)}") from None

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
        """Close the pools; release the embedded server (stopped when this was its last user)."""
        if self._closed:
            return
        self._closed = True
        if self._pinned is not None:
            self._pinned.close()
        for pool in (self._read_pool, self._write_pool):
            if pool is not None:
                pool.close(timeout=2)
        if self.embedded is not None and self._lease is not None:
            lease, self._lease = self._lease, None
            if self.embedded.release(lease):
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
    migrate: bool | None = None,
    pool_size: int = 32,
    ledger: bool = False,
) -> Database:
    """Open the harness database.

    ``url`` (or ``HARNESS_DATABASE_URL``; never ``DATABASE_URL``) names any
    PostgreSQL 14+. Its schema must exist (``harness db migrate``, or
    ``migrate=True``); a missing table, column or privilege is one clear
    ``SetupError``. With no URL, an embedded PostgreSQL is started (or
    joined) in ``data_dir`` (default ``HARNESS_DATA_DIR`` or
    ``~/.claimcheck/pgdata``); its schema is created as needed, and it is
    stopped by the ``close()`` of its last user, unless ``harness db start``
    pinned it. ``ledger`` also requires the Locust ledger tables.
    """
    settings = Settings.from_env()
    url = url or settings.database_url
    if url:
        check_reachable(url)
        db = Database(url, pool_size=pool_size)
        if migrate:
            db.migrate()
        else:
            db.verify(ledger=ledger)
        return db
    server = EmbeddedServer(Path(data_dir) if data_dir else settings.data_dir)
    server_url, started, lease = server.acquire()
    db = Database(server_url, embedded=server, owns_server=started, pool_size=pool_size)
    db._lease = lease
    try:
        if migrate is not False:
            db.migrate()
    except BaseException:
        db.close()
        raise
    return db
