"""``harness bench``: pgbench and the harness on the same statement; the shape, never the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.bench import BENCH_CLIENT, PGBENCH_SCRIPT, bench, find_pgbench
from harness.claims import ATOMIC_SQL
from harness.database import Database


def test_pgbench_runs_the_seeds_claim_statement() -> None:
    assert find_pgbench().exists()
    statement = PGBENCH_SCRIPT.splitlines()[-1]
    assert statement.startswith("UPDATE oauth_auth_codes SET used_at = now() WHERE code = :i "
                                "AND used_at IS NULL RETURNING")
    assert statement.split("RETURNING")[1].strip(" ;") == ATOMIC_SQL.split("RETURNING")[1].strip()


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
    with db.connect() as conn:
        left = conn.execute("SELECT count(*) FROM oauth_auth_codes WHERE client_id = %s",
                            (BENCH_CLIENT,)).fetchone()
    assert left is not None and left[0] == 0  # the bench cleans up after itself


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


def test_bench_cli_rejects_bad_client_counts(database: Database) -> None:
    env = dict(os.environ, HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="p")
    done = subprocess.run([sys.executable, "-m", "harness", "bench", "--clients", "2,x"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "comma-separated integers" in done.stderr
