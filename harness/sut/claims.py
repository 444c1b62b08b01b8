"""Claim strategies for an authorization code: how "only one caller wins" is (or is not) enforced.

Each strategy takes its own connection and returns the claimed row, or
``None`` when the code cannot be claimed. ``atomic`` is the seed's statement;
``for_update`` is the row-lock alternative; ``naive`` is the negative control
(read, then write, with nothing tying the two together).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import psycopg
from psycopg import IsolationLevel


class Strategy(StrEnum):
    ATOMIC = "atomic"
    FOR_UPDATE = "for_update"
    NAIVE = "naive"


class Isolation(StrEnum):
    READ_COMMITTED = "read_committed"
    REPEATABLE_READ = "repeatable_read"
    SERIALIZABLE = "serializable"

    @property
    def level(self) -> IsolationLevel:
        return {
            Isolation.READ_COMMITTED: IsolationLevel.READ_COMMITTED,
            Isolation.REPEATABLE_READ: IsolationLevel.REPEATABLE_READ,
            Isolation.SERIALIZABLE: IsolationLevel.SERIALIZABLE,
        }[self]


class CodeRow(NamedTuple):
    """What the seed's claim ``RETURNING`` clause gives back."""

    user_id: str
    scope: str
    expires_at: datetime
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str | None
    resource: str | None
    client_id: str


_COLUMNS = (
    "user_id, scope, expires_at, redirect_uri, code_challenge, "
    "code_challenge_method, resource, client_id"
)

ATOMIC_SQL = (
    "UPDATE oauth_auth_codes SET used_at = %s WHERE code = %s AND used_at IS NULL "
    f"RETURNING {_COLUMNS}"
)
_SELECT_FOR_UPDATE = (
    f"SELECT {_COLUMNS} FROM oauth_auth_codes WHERE code = %s AND used_at IS NULL FOR UPDATE"
)
SELECT_UNUSED = f"SELECT {_COLUMNS} FROM oauth_auth_codes WHERE code = %s AND used_at IS NULL"
MARK_USED = "UPDATE oauth_auth_codes SET used_at = %s WHERE code = %s"


def _row(raw: Any) -> CodeRow | None:
    return CodeRow(*raw) if raw is not None else None


def _autocommit_claim(
    conn: psycopg.Connection[Any], code_hash: str, now: datetime, strategy: Strategy
) -> CodeRow | None:
    if strategy is Strategy.ATOMIC:
        # The seed: one autocommit statement, nothing else.
        return _row(conn.execute(ATOMIC_SQL, (now, code_hash), prepare=True).fetchone())
    row = _row(conn.execute(SELECT_UNUSED, (code_hash,), prepare=True).fetchone())
    if row is not None:
        # Nothing ties this write to the read above: another caller may have
        # claimed the code in between, and this UPDATE does not re-check used_at.
        conn.execute(MARK_USED, (now, code_hash), prepare=True)
    return row


def claim(
    conn: psycopg.Connection[Any],
    code_hash: str,
    now: datetime,
    strategy: Strategy = Strategy.ATOMIC,
    isolation: Isolation = Isolation.READ_COMMITTED,
) -> CodeRow | None:
    """Claim ``code_hash`` at ``now``; raises ``psycopg.errors.SerializationFailure`` on 40001."""
    if isolation is Isolation.READ_COMMITTED and strategy is not Strategy.FOR_UPDATE:
        return _autocommit_claim(conn, code_hash, now, strategy)
    previous = conn.isolation_level
    conn.isolation_level = isolation.level
    try:
        with conn.transaction():
            if strategy is Strategy.ATOMIC:
                return _row(conn.execute(ATOMIC_SQL, (now, code_hash), prepare=True).fetchone())
            select = _SELECT_FOR_UPDATE if strategy is Strategy.FOR_UPDATE else SELECT_UNUSED
            row = _row(conn.execute(select, (code_hash,), prepare=True).fetchone())
            if row is None:
                return None
            # The naive control writes without re-checking used_at: between its
            # SELECT and this UPDATE another caller may have claimed the code.
            conn.execute(MARK_USED, (now, code_hash), prepare=True)
            return row
    finally:
        conn.isolation_level = previous
