"""``harness bench``: pgbench and the harness on the same statement; the shape, never the speed.

And the safety contract (DESIGN.md, "Someone else's database"): the bench
writes only rows of its own run and removes exactly those, so a client that
merely shares the old fixed name ``bench-client`` keeps every row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import harness_env, harness_serve

from harness.bench import PGBENCH_BASE, bench, find_pgbench, pgbench_script
from harness.cpu import find_postmaster
from harness.database import Database
from harness.errors import SetupError
from harness.scope import PREFIX, open_scopes
from harness.sut.claims import ATOMIC_SQL

#: The four oauth tables and the column that names whose a row is (``cc-…`` when the harness's).
_OWNER = {"users": "id", "oauth_clients": "client_id", "oauth_refresh_tokens": "client_id",
          "oauth_auth_codes": "client_id"}
FOREIGN_CLIENT = "bench-client"  # the name the bench used to delete every code of
FOREIGN_USER = "bench-user"
#: Codes as the old bench seeded and claimed them (``g::text`` from PGBENCH_BASE): pgbench's
#: first claims would have hit these, had they survived the old bench's opening DELETE.
FOREIGN_CODES = [str(PGBENCH_BASE + k) for k in range(4)]


def test_pgbench_runs_the_seeds_claim_statement() -> None:
    assert find_pgbench().exists()
    prefix = "cc-0123abcd-pg-s1-"
    statement = pgbench_script(prefix).splitlines()[-1]
    assert statement.startswith(f"UPDATE oauth_auth_codes SET used_at = now() WHERE code = '{prefix}' "
                                "|| :i AND used_at IS NULL RETURNING")
    assert statement.split("RETURNING")[1].strip(" ;") == ATOMIC_SQL.split("RETURNING")[1].strip()


@pytest.mark.parametrize("prefix", ["", "cc-x'; DROP TABLE users; --", "cc-a:b-", "cc-a\\b-"])
def test_pgbench_script_refuses_a_prefix_it_cannot_quote(prefix: str) -> None:
    # The prefix goes into the script as an SQL literal: only characters that need no quoting.
    with pytest.raises(ValueError):
        pgbench_script(prefix)


def test_bench_both_sides_ran_and_claimed_distinct_codes(db: Database, pepper: str) -> None:
    frame = bench(db, clients=[2], duration_s=1, pepper=pepper, synchronous_commit=False)
    row = frame.iloc[0]
    for column in ("clients", "pgbench_tps", "harness_ops_per_s", "ratio", "claim_ops_per_s",
                   "mux_ops_per_s", "mux_ratio"):
        assert column in frame.columns
    assert row.clients == 2
    assert row.pgbench_tps > 0 and row.harness_ops_per_s > 0
    assert row.claim_ops_per_s > 0 and row.mux_ops_per_s > 0
    assert row.ratio > 0
    # Every pgbench transaction claimed a code of its own, and no harness claim was refused.
    assert row.pgbench_claimed == row.pgbench_transactions > 0, row.to_dict()
    assert row.harness_errors == 0 and row.harness_ops > 0
    # Where the time goes: CPU µs per op of each side, measured for every path of the segment.
    local = find_postmaster(db) is not None
    for name in ("pgbench", "harness", "claim", "mux", "green"):
        assert row[f"{name}_client_us"] > 0, name
        if local:  # the embedded server: its backends' CPU is readable from /proc
            assert row[f"{name}_server_us"] > 0, name
    assert _harness_rows(db) == 0  # the bench cleans up after itself


@pytest.fixture
def foreign_rows(db: Database) -> Iterator[None]:
    """Rows the harness did not write, under the old bench's names, and a table of someone else's.

    ``invoices`` references ``users`` as an application's own table would:
    deleting the foreign user (or a ``TRUNCATE``/``CASCADE``) would fail or
    take the invoice with it. Dropped afterwards, or the next test's
    ``reset()`` could not empty ``users``.
    """
    with db.connect() as conn:
        conn.execute("INSERT INTO oauth_clients (client_id, client_name) VALUES (%s, 'not ours')",
                     (FOREIGN_CLIENT,))
        conn.execute("INSERT INTO users (id, email) VALUES (%s, 'someone@example.com')", (FOREIGN_USER,))
        conn.execute(
            "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, expires_at, "
            "family_id) VALUES ('foreign-token', %s, %s, 'openid', now() + interval '1 day', 'fam')",
            (FOREIGN_CLIENT, FOREIGN_USER))
        for code in FOREIGN_CODES:
            conn.execute(
                "INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, "
                "expires_at, refresh_token_id) VALUES (%s, %s, %s, 'https://app.example/cb', "
                "'openid', now() + interval '1 day', 'foreign-token')",
                (code, FOREIGN_CLIENT, FOREIGN_USER))
        conn.execute("CREATE TABLE invoices (id serial PRIMARY KEY, user_id text REFERENCES users(id))")
        conn.execute("INSERT INTO invoices (user_id) VALUES (%s)", (FOREIGN_USER,))
    try:
        yield
    finally:
        with db.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS invoices")


def _foreign_dump(db: Database) -> dict[str, list[str]]:
    """Every non-``cc-`` row of the oauth tables and the whole ``invoices`` table, as text."""
    dump: dict[str, list[str]] = {}
    with db.connect() as conn:
        for table, owner in _OWNER.items():
            dump[table] = [r[0] for r in conn.execute(
                f"SELECT t::text FROM {table} t WHERE NOT starts_with({owner}, %s) ORDER BY 1".encode(),
                (PREFIX,))]
        dump["invoices"] = [r[0] for r in conn.execute("SELECT t::text FROM invoices t ORDER BY 1")]
    return dump


def _harness_rows(db: Database) -> int:
    """Rows left whose owner is named ``cc-…`` (only the harness names rows so)."""
    with db.connect() as conn:
        return sum(
            int(conn.execute(f"SELECT count(*) FROM {table} WHERE starts_with({owner}, %s)".encode(),
                             (PREFIX,)).fetchone()[0])  # type: ignore[index]
            for table, owner in _OWNER.items())


@pytest.mark.usefixtures("foreign_rows")
def test_bench_leaves_rows_it_did_not_create(db: Database, pepper: str) -> None:
    before = _foreign_dump(db)
    assert len(before["oauth_auth_codes"]) == len(FOREIGN_CODES) and before["invoices"]
    frame = bench(db, clients=[2], duration_s=1, pepper=pepper, synchronous_commit=False)
    assert frame.iloc[0].pgbench_claimed == frame.iloc[0].pgbench_transactions > 0
    # Byte for byte: not deleted, not claimed (used_at), not unlinked from their token.
    assert _foreign_dump(db) == before
    assert _harness_rows(db) == 0
    assert not open_scopes()


@pytest.mark.usefixtures("foreign_rows")
def test_interrupted_bench_removes_its_rows_and_only_those(db: Database, pepper: str) -> None:
    before = _foreign_dump(db)

    def interrupt(what: str) -> None:
        # Ctrl-C after pgbench's segment was seeded and run, as the harness's segment starts.
        if what.startswith("harness"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench(db, clients=[1], duration_s=1, pepper=pepper, paths=["claim"], progress=interrupt)
    assert _foreign_dump(db) == before
    assert _harness_rows(db) == 0
    assert not open_scopes()


def test_bench_cli_json_rows(database: Database) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="bench-pepper")
    done = subprocess.run([sys.executable, "-m", "harness", "bench", "--clients", "1,2",
                           "--duration", "1", "--format", "json", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["clients"] for r in rows] == [1, 2]
    for r in rows:
        assert {"clients", "pgbench_tps", "harness_ops_per_s", "ratio"} <= set(r)
        assert r["pgbench_tps"] > 0 and r["harness_ops_per_s"] > 0
        assert abs(r["ratio"] - r["harness_ops_per_s"] / r["pgbench_tps"]) < 0.02


@pytest.mark.parametrize(("args", "message"), [
    (["--duration", "0"], "--duration"),
    (["--duration", "x"], "--duration"),
    (["--rounds", "0"], "--rounds"),
    (["--clients", "0"], "--clients"),
    (["--clients", "x"], "--clients"),
    (["--clients", "2,x"], "--clients"),
    (["--clients", ","], "--clients"),
])
def test_bench_cli_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    # An unreachable server: the arguments are refused before anything connects.
    env = dict(os.environ, HARNESS_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
               HARNESS_AT_REST_PEPPER="p")
    done = subprocess.run([sys.executable, "-m", "harness", "bench", *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert done.stdout == ""


def test_the_whole_exchange_in_process_and_over_http_against_pgbench(
        db: Database, pepper: str, tmp_path: Path) -> None:
    with harness_serve("--target", "faithful", env=harness_env(db.url, pepper=pepper),
                       logs=tmp_path / "serve") as served:
        frame = bench(db, clients=[2], duration_s=1, pepper=pepper, exchange=True,
                      endpoint=served.base)
    row = frame.iloc[0]
    assert row.operation == "exchange"
    # pgbench ran the port's three statements; the harness its exchange_code, in process and
    # through the token endpoint of `harness serve`, each code redeemed once, none refused.
    assert row.pgbench_claimed == row.pgbench_transactions > 0, row.to_dict()
    assert row.green_ops_per_s > 0 and row.http_ops_per_s > 0
    assert row.harness_errors == 0, row.note
    for path in ("green", "http"):
        assert 0 < row[f"{path}_p50_ms"] <= row[f"{path}_p99_ms"]
        assert row[f"{path}_client_us"] > 0
    assert _harness_rows(db) == 0


def test_an_endpoint_on_another_database_is_refused_before_the_clock(
        db: Database, pepper: str, tmp_path: Path) -> None:
    # The same database, another pepper: the codes the bench stores are unknown to this server.
    env = harness_env(db.url, pepper=pepper + "-other")
    with harness_serve("--target", "faithful", env=env, logs=tmp_path / "serve") as served, \
            pytest.raises(SetupError, match="refused"):
        bench(db, clients=[1], duration_s=1, pepper=pepper, exchange=True, endpoint=served.base)
    with pytest.raises(SetupError, match="--exchange"):
        bench(db, clients=[1], duration_s=1, pepper=pepper, endpoint="http://127.0.0.1:9")
    assert _harness_rows(db) == 0
