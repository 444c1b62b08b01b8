"""The schema of DESIGN.md: the seed's tables, columns, foreign keys, CHECKs and indexes."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from conftest import public_tables

from harness.database import Database

SEED_TABLES = {"users", "oauth_clients", "oauth_auth_codes", "oauth_refresh_tokens"}
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def columns(db: Database, table: str) -> dict[str, tuple[str, str]]:
    with db.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = %s", (table,))}


def insert_code(conn: psycopg.Connection[object], code: str, **extra: object) -> None:
    fields = {"code": code, "client_id": "client-a", "user_id": "user-1", "redirect_uri": "r",
              "scope": "s", "expires_at": NOW, **extra}
    names = ", ".join(fields)
    conn.execute(f"INSERT INTO oauth_auth_codes ({names}) VALUES ({', '.join(['%s'] * len(fields))})"
                 .encode(), list(fields.values()))


def insert_token(conn: psycopg.Connection[object], token: str, family: str = "f") -> None:
    conn.execute("INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, expires_at, "
                 "family_id) VALUES (%s, 'client-a', 'user-1', 's', %s, %s)", (token, NOW, family))


def test_tables_seed_and_harness_apart(db: Database) -> None:
    tables = set(public_tables(db))
    assert tables >= SEED_TABLES
    assert all(t.startswith("harness_") for t in tables - SEED_TABLES)


def test_auth_code_columns(db: Database) -> None:
    assert columns(db, "oauth_auth_codes") == {
        "code": ("text", "NO"), "client_id": ("text", "NO"), "user_id": ("text", "NO"),
        "redirect_uri": ("text", "NO"), "scope": ("text", "NO"),
        "expires_at": ("timestamp with time zone", "NO"), "used_at": ("timestamp with time zone", "YES"),
        "code_challenge": ("text", "YES"), "code_challenge_method": ("text", "YES"),
        "resource": ("text", "YES"), "refresh_token_id": ("text", "YES"),
        "created_at": ("timestamp with time zone", "NO"),
    }


def test_refresh_token_columns(db: Database) -> None:
    cols = columns(db, "oauth_refresh_tokens")
    assert cols["token_id"] == ("text", "NO")
    assert cols["family_id"] == ("text", "NO")
    assert cols["consumed_at"] == ("timestamp with time zone", "YES")
    assert cols["expires_at"] == ("timestamp with time zone", "NO")
    assert {"client_id", "user_id", "scope", "resource", "created_at"} <= set(cols)


def test_users_and_clients_need_only_their_key(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO users (id) VALUES ('u-2')")
        conn.execute("INSERT INTO oauth_clients (client_id) VALUES ('c-2')")


@pytest.mark.parametrize("method", ["S256", "plain", None])
def test_challenge_method_accepted(db: Database, method: str | None) -> None:
    with db.connect() as conn:
        insert_code(conn, "h1", code_challenge_method=method)


@pytest.mark.parametrize("method", ["s256", "S512", ""])
def test_challenge_method_check(db: Database, method: str) -> None:
    with db.connect() as conn, pytest.raises(psycopg.errors.CheckViolation):
        insert_code(conn, "h1", code_challenge_method=method)


def test_empty_digests_refused(db: Database) -> None:
    with db.connect() as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_code(conn, "")
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_token(conn, "")
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_token(conn, "t", family="")


def test_foreign_keys(db: Database) -> None:
    with db.connect() as conn:
        # 1. a code or token must name an existing client and user
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            insert_code(conn, "h1", client_id="nobody")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            insert_code(conn, "h1", user_id="nobody")
        # 2. refresh_token_id references a token, and is set NULL when the token is deleted
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            insert_code(conn, "h1", refresh_token_id="no-such-token")
        insert_token(conn, "t1")
        insert_code(conn, "h1", refresh_token_id="t1")
        conn.execute("DELETE FROM oauth_refresh_tokens WHERE family_id = 'f'")
        assert conn.execute("SELECT refresh_token_id FROM oauth_auth_codes").fetchall() == [(None,)]
        # 3. deleting the client cascades to its codes
        conn.execute("DELETE FROM oauth_clients WHERE client_id = 'client-a'")
        assert conn.execute("SELECT count(*) FROM oauth_auth_codes").fetchone() == (0,)


def test_indexes(db: Database) -> None:
    with db.connect() as conn:
        indexed = {(r[0], r[1]) for r in conn.execute(
            "SELECT t.relname, a.attname FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'")}
    assert indexed >= {
        ("oauth_auth_codes", "code"), ("oauth_auth_codes", "client_id"),
        ("oauth_auth_codes", "user_id"), ("oauth_auth_codes", "expires_at"),
        ("oauth_auth_codes", "refresh_token_id"),
        ("oauth_refresh_tokens", "token_id"), ("oauth_refresh_tokens", "family_id"),
        ("oauth_refresh_tokens", "client_id"), ("oauth_refresh_tokens", "user_id"),
        ("oauth_refresh_tokens", "expires_at"),
    }
