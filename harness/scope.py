"""Run scopes: every row the harness writes is tagged with its run, and only those rows are removed.

The safety contract (DESIGN.md, "Someone else's database"): a reviewer points
the harness at a staging database that holds real rows. So each run names
everything it creates ``cc-<run id>-<label>`` (clients, users; codes and
refresh tokens hang off those clients), and :meth:`RunScope.cleanup` deletes
exactly the rows that carry its prefix, children first, never with
``TRUNCATE`` or ``CASCADE``::

    with RunScope(db, "race") as scope:
        client, user = scope.party("racer")        # two INSERTs, tagged with the run id
        ...                                        # codes and tokens for that client
    # here every row of this run is gone, also after Ctrl-C or an exception

A scope still open when the interpreter exits (a notebook's kernel shut
down, an uncaught ``SystemExit``) is cleaned by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from harness.database import Database

log = logging.getLogger(__name__)

#: Every name the harness gives a row starts with this.
PREFIX = "cc-"

_OPEN: weakref.WeakSet[RunScope] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


def new_run_id() -> str:
    """8 hex digits from the CSPRNG: unique enough that no foreign row can carry the prefix by chance."""
    return secrets.token_hex(4)


@dataclass
class Removed:
    """How many rows of each table a cleanup deleted."""

    codes: int = 0
    refresh_tokens: int = 0
    clients: int = 0
    users: int = 0
    ledger: int = 0

    @property
    def total(self) -> int:
        return self.codes + self.refresh_tokens + self.clients + self.users + self.ledger


@dataclass(eq=False)
class RunScope:
    """The rows of one run: named ``cc-<run_id>-…``, removed by :meth:`cleanup` and nothing else."""

    db: Database
    purpose: str = "run"
    run_id: str = field(default_factory=new_run_id)
    #: False: leave the rows (``--keep-rows``); the names still say which run made them.
    remove: bool = True
    removed: Removed | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        with _OPEN_LOCK:
            _OPEN.add(self)

    @property
    def prefix(self) -> str:
        """What every name of this run starts with."""
        return f"{PREFIX}{self.run_id}-"

    def name(self, label: str) -> str:
        """A name of this run: ``cc-<run id>-<label>``."""
        return f"{self.prefix}{label}"

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def party(self, client_label: str = "client", user_label: str = "user") -> tuple[str, str]:
        """Insert an ``oauth_clients`` and a ``users`` row of this run; return (client_id, user_id)."""
        client_id, user_id = self.name(client_label), self.name(user_label)
        self.db.ensure_party(client_id, user_id)
        return client_id, user_id

    def cleanup(self) -> Removed:
        """Delete this run's codes, refresh tokens, clients, users and ledger rows; nothing else.

        Children first, each by this run's prefix: no ``CASCADE`` is relied
        on, no other row is touched. Idempotent.
        """
        if self._closed:
            return self.removed or Removed()
        self._closed = True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if not self.remove:
            self.removed = Removed()
            return self.removed
        removed = Removed()
        p = self.prefix
        with self.db.connect() as conn, conn.transaction():
            # Codes before tokens: a code links its refresh token (ON DELETE SET NULL would
            # otherwise write to the code rows on the way).
            removed.codes = conn.execute(
                "DELETE FROM oauth_auth_codes WHERE starts_with(client_id, %s) OR starts_with(user_id, %s)",
                (p, p)).rowcount
            removed.refresh_tokens = conn.execute(
                "DELETE FROM oauth_refresh_tokens WHERE starts_with(client_id, %s) "
                "OR starts_with(user_id, %s)", (p, p)).rowcount
            removed.clients = conn.execute(
                "DELETE FROM oauth_clients WHERE starts_with(client_id, %s)", (p,)).rowcount
            removed.users = conn.execute("DELETE FROM users WHERE starts_with(id, %s)", (p,)).rowcount
            removed.ledger = _delete_ledger(conn, self.run_id)
        self.removed = removed
        log.info("run %s (%s): removed %d rows", self.run_id, self.purpose, removed.total)
        return removed

    def __enter__(self) -> RunScope:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


def _delete_ledger(conn: psycopg.Connection[object], run_id: str) -> int:
    """The Locust ledger rows of ``run_id`` (the tables exist once the schema is migrated)."""
    total = 0
    for table in ("harness_ledger", "harness_ledger_attempts", "harness_ledger_workers"):
        try:
            with conn.transaction():  # a savepoint: a missing ledger table must not undo the rest
                total += conn.execute(f"DELETE FROM {table} WHERE run_id = %s".encode(),
                                      (run_id,)).rowcount
        except psycopg.errors.UndefinedTable:
            continue
    return total


def open_scopes() -> list[RunScope]:
    """Scopes not cleaned yet (for the interrupt handler and the tests)."""
    with _OPEN_LOCK:
        return list(_OPEN)


def cleanup_open_scopes() -> None:
    """Clean every scope still open; errors are logged, never raised (this runs on the way out)."""
    for scope in open_scopes():
        try:
            scope.cleanup()
        except Exception as exc:  # the database may be gone; say so and go on
            log.warning("could not remove the rows of run %s: %s", scope.run_id, type(exc).__name__)


atexit.register(cleanup_open_scopes)
