"""Shared helpers for the foundation tests (the database fixtures come from ``harness.testing.plugin``)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import conninfo, sql

from harness.database import Database
from harness.repository import AuthCodeParams, OAuthRepository, RefreshTokenParams
from harness.testing.plugin import CLIENT, USER

REDIRECT = "https://client.example/cb"


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The environment of a process that must use its own embedded server in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
    env["HARNESS_DATA_DIR"] = str(data_dir)
    return env


def harness_env(url: str, *, pepper: str | None = None) -> dict[str, str]:
    """The environment of a harness process on the database ``url``, none of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET", "HARNESS_AT_REST_PEPPER")}
    env["HARNESS_DATABASE_URL"] = url
    if pepper is not None:
        env["HARNESS_AT_REST_PEPPER"] = pepper
    return env


def interrupt(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Stop a server as Ctrl-C would; kill it only if it does not exit within ``timeout``."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def public_tables(db: Database) -> list[str]:
    """Every table of the public schema, the harness_ ones included."""
    with db.connect() as conn:
        return [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        )]


def row_counts(db: Database) -> dict[str, int]:
    """``{table: rows}`` for every public table."""
    with db.connect() as conn:
        counts = {}
        for table in public_tables(db):
            row = conn.execute(f'SELECT count(*) FROM "{table}"'.encode()).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts


def dump_all(db: Database) -> str:
    """Every row of every public table, rendered as PostgreSQL's text form of the row."""
    with db.connect() as conn:
        lines = []
        for table in public_tables(db):
            lines += [f"{table}: {r[0]}" for r in conn.execute(f'SELECT t::text FROM "{table}" t'.encode())]
        return "\n".join(lines)


def code_row(db: Database, code_hash: str) -> dict[str, object] | None:
    """The ``oauth_auth_codes`` row of a digest, as a dict."""
    with db.connect() as conn:
        cur = conn.execute("SELECT * FROM oauth_auth_codes WHERE code = %s", (code_hash,))
        row = cur.fetchone()
        names = [c.name for c in cur.description or []]
    return dict(zip(names, row, strict=True)) if row else None


def family_rows(db: Database, family_id: str) -> list[tuple[str, datetime | None]]:
    """(token_id, consumed_at) of every live token of a family."""
    with db.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT token_id, consumed_at FROM oauth_refresh_tokens WHERE family_id = %s "
            "ORDER BY created_at", (family_id,))]


StoreCode = Callable[..., str]


@pytest.fixture
def store_code(faithful: OAuthRepository) -> StoreCode:
    """``store_code(code="c1", **overrides)`` stores a code for client-a/user-1 and returns the raw code."""

    def store(code: str = "code-1", target: OAuthRepository | None = None, **overrides: str | None) -> str:
        fields: dict[str, str | None] = {"client_id": CLIENT, "user_id": USER,
                                         "redirect_uri": REDIRECT, "scope": "openid profile"}
        fields.update(overrides)
        (target or faithful).store_authorization_code(AuthCodeParams(code=code, **fields))  # type: ignore[arg-type]
        return code

    return store


StoreToken = Callable[..., str]


@pytest.fixture
def store_token(faithful: OAuthRepository) -> StoreToken:
    """``store_token("rt-1", family_id=None, ttl_s=3600, client_id=CLIENT)``; returns the family."""

    def store(token: str = "rt-1", *, family_id: str | None = None, ttl_s: float = 3600,
              client_id: str = CLIENT) -> str:
        return faithful.store_refresh_token(RefreshTokenParams(
            token_id=token, client_id=client_id, user_id=USER, scope="openid",
            expires_at=faithful.clock.now() + timedelta(seconds=ttl_s), family_id=family_id))

    return store


def free_port() -> int:
    """A loopback port nobody listens on (the kernel's pick for port 0): tests never use a fixed one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- a real ``harness serve`` ------------------------------------------------------------------------

#: How long a ``harness serve`` subprocess may take to answer /healthz (a loaded 2-core machine).
SERVE_READY_TIMEOUT_S = 60.0


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    logs: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return (self.logs / "stderr").read_bytes().decode("utf-8", "replace")

    def output(self) -> str:
        return (self.logs / "stdout").read_bytes().decode("utf-8", "replace") + self.stderr()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Stop it as Ctrl-C (or SIGTERM) would; kill it only if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def harness_serve(*argv: str, env: dict[str, str], logs: Path,
                  options: tuple[str, ...] = ()) -> Iterator[Served]:
    """``harness *options serve --port 0 *argv`` until /healthz answers; stopped (Ctrl-C) on the way out."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("harness")), *options, "serve",
                                 "--port", "0", *argv], env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    served = Served(proc, 0, logs)
    try:
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        while not (match := re.search(r"POST http://127\.0\.0\.1:(\d+)/token", served.stderr())):
            assert proc.poll() is None, f"harness serve exited early:\n{served.output()}"
            assert time.monotonic() < deadline, f"harness serve did not start:\n{served.output()}"
            time.sleep(0.1)
        served.port = int(match.group(1))
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.base}/healthz", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None, f"harness serve exited early:\n{served.output()}"
            assert time.monotonic() < deadline, f"harness serve did not answer:\n{served.output()}"
            time.sleep(0.2)
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def authlib_database(database: Database) -> Iterator[str]:
    """``authlib_<random>`` on the session's server for the Authlib test server's tables; dropped after."""
    name = f"authlib_{secrets.token_hex(6)}"
    with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(database.url, dbname=name)
    finally:
        with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- Locust --------------------------------------------------------------------------------------------

#: ``locust`` with the project's config and locustfile, from this interpreter's environment.
LOCUST = [str(Path(sys.executable).parent / "locust"), "--config",
          str(Path(__file__).resolve().parents[1] / "load" / "locust.conf"),
          "-f", str(Path(__file__).resolve().parents[1] / "load" / "locustfile.py")]
#: Settings a Locust run must not inherit from the shell that started the suite.
_LOCUST_SCRUBBED = ("HARNESS_TARGET", "DATABASE_URL", "LOCUST_USER_CLASSES", "HARNESS_ENDPOINT",
                    "HARNESS_ENDPOINT_CLIENT", "HARNESS_ENDPOINT_PKCE", "HARNESS_AT_REST_PEPPER")


@pytest.fixture
def locust_env(database: Database) -> dict[str, str]:
    """Locust's environment: the ledger in the suite's database, no pepper (a run adds its own)."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCUST_SCRUBBED}
    env.update(HARNESS_DATABASE_URL=database.url, PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env
