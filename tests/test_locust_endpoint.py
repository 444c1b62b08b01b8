"""Locust against any described server (``--endpoint``): codes minted ahead of their slots, judged by tokens.

The master (or the single process) mints every slot's code at the server's
authorization endpoint and sends code and verifier to the workers; the racers
redeem it at the described token endpoint as the described client; the ledger
counts distinct token sets per code. Against ``harness serve`` (naive: exit 1,
faithful: exit 0) and against Authlib's documented server (exit 1) and the
same server claiming its codes atomically (exit 0). Each run lasts a few seconds.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from authlib_server.launcher import start_authlib_server
from conftest import LOCUST, free_port, harness_serve, row_counts

from harness.database import Database
from harness.ledger import (
    Attempt,
    Win,
    check,
    exit_status,
    pack_detail,
    render,
    token_outcome,
    unpack_detail,
)
from harness.redact import fingerprint
from harness.scope import PREFIX

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVE_TOML = ROOT / "examples" / "endpoints" / "harness-serve.toml"
AUTHLIB_TOML = ROOT / "tests" / "authlib_server" / "authlib.toml"
RUN_S = 4
#: Authlib answers in ~100 ms under 16 racers on 2 shared cores (a tenth of `harness serve`'s pace):
#: a little longer, so that a loaded machine still sees its double wins, not only its 500s.
AUTHLIB_RUN_S = 6
#: Nothing Locust's own runs need from the suite's environment (the target, a stray database URL).

# -- pure: the outcome of an answer, and the checker over token sets ------------------------------


def test_an_answer_is_won_lost_or_indeterminate_by_rfc_6749() -> None:
    won = token_outcome(200, json.dumps({"access_token": "at-1", "token_type": "Bearer"}))
    assert won == ("won", None, fingerprint("at-1"))
    assert "at-1" not in repr(won)  # a fingerprint, never the token
    assert token_outcome(400, '{"error": "invalid_grant"}') == ("lost", "HTTP 400 invalid_grant", None)
    assert token_outcome(401, '{"error": "invalid_client"}')[0] == "lost"  # a definite refusal
    for status, body in [(500, '{"error": "server_error"}'), (503, ""), (502, "<html>"),
                         (400, "not json"), (200, "{}"), (200, "<html>")]:
        outcome, detail, token = token_outcome(status, body)
        assert (outcome, token) == ("error", None), (status, body)  # indeterminate
        assert detail


def test_a_token_rides_in_the_detail_column_and_comes_back() -> None:
    for detail, token in [(None, None), ("x", None), (None, "sha256:ab"),
                          ("ledger write failed: E", "sha256:ab")]:
        assert unpack_detail(pack_detail(detail, token)) == (detail, token)


def _won(code: int, racer: str, token: str | None, start: int = 0, end: int = 10) -> Attempt:
    return Attempt("w", racer, code, "won", start, end, None, token)


def _lost(code: int, racer: str, start: int = 1, end: int = 5) -> Attempt:
    return Attempt("w", racer, code, "lost", start, end)


def test_racers_answered_with_one_token_set_are_one_win() -> None:
    # Two 200s with the same pair: the server issued once (an idempotent answer), not twice.
    attempts = [_won(0, "a", "sha256:t1"), _won(0, "b", "sha256:t1", 1, 12), _lost(0, "c")]
    wins = [Win(0, "h", "w/a", 0, 10), Win(0, "h", "w/b", 1, 12)]
    result = check(wins, attempts)
    assert result.valid and exit_status(result) == 0, result.summary
    assert (result.summary["wins"], result.summary["shared_token_wins"]) == (1, 1)
    assert "token set another racer also got" in render(result)
    # Two distinct pairs for one code: won twice, whatever the number of 200s.
    attempts[1] = _won(0, "b", "sha256:t2", 1, 12)
    result = check(wins, attempts)
    assert not result.valid and exit_status(result) == 1
    assert result.evidence[0]["wins"] == 2 and result.evidence[0]["winners"] == ["w/a", "w/b"]


def test_a_serial_server_makes_a_pass_inconclusive_never_a_violation() -> None:
    attempts = [_won(0, "a", "sha256:t1"), _lost(0, "b")]
    wins = [Win(0, "h", "w/a", 0, 10)]
    result = check(wins, attempts, server_concurrency=1)
    assert result.valid and exit_status(result) == 2
    assert "the server runs one request at a time" in render(result)
    assert "server concurrency 1" in render(result).splitlines()[0]
    assert check(wins, attempts, server_concurrency=4).summary["status"] == "holds"
    double = [*attempts, _won(0, "c", "sha256:t2", 2, 9)]
    assert exit_status(check([*wins, Win(0, "h", "w/c", 2, 9)], double, server_concurrency=1)) == 1


# -- Locust runs -----------------------------------------------------------------------------------


def run_locust(env: dict[str, str], tmp_path: Path, *args: str, timeout: float = 120
               ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    verdict = tmp_path / f"verdict-{time.monotonic_ns()}.json"
    proc = subprocess.run([*LOCUST, "--headless", "--only-summary", "--verdict-file", str(verdict), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    data = json.loads(verdict.read_text()) if verdict.exists() else None
    return proc, data


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"




def ledger_rows(db: Database, run_id: str) -> dict[str, int]:
    """What a run left: its ledger rows, and any row named after it (this mode writes none)."""
    p = f"{PREFIX}{run_id}-"
    with db.connect() as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE run_id = %s".encode(),
                                  (run_id,)).fetchone()
                  for t in ("harness_ledger", "harness_ledger_attempts", "harness_ledger_workers")}
        counts["named"] = conn.execute(
            "SELECT (SELECT count(*) FROM oauth_clients WHERE starts_with(client_id, %(p)s)) "
            "+ (SELECT count(*) FROM users WHERE starts_with(id, %(p)s))", {"p": p}).fetchone()
    return {t: int(row[0]) for t, row in counts.items() if row is not None and row[0]}


@contextlib.contextmanager
def served(target: str, database: Database, tmp_path: Path) -> Iterator[dict[str, str]]:
    """``harness serve --target T`` on a free port; yields what the shipped description reads."""
    secret = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="locust-endpoint-pepper",
               CLAIMCHECK_CLIENT_SECRET=secret)
    with harness_serve("--target", target, env=env, logs=tmp_path / f"serve-{target}") as server:
        yield {"CLAIMCHECK_SERVER": server.base, "CLAIMCHECK_CLIENT_SECRET": secret}


def test_naive_harness_serve_is_caught_by_workers_fed_by_the_master(
        locust_env: dict[str, str], database: Database, tmp_path: Path) -> None:
    """``--processes 2``: the master mints, both workers race the codes it sends them, exit 1."""
    port = str(free_port())  # not Locust's default 5557: other runs may be using it
    with served("naive", database, tmp_path) as server:
        # The naive target computes S256 with padded standard base64 (its pkce.appendix-b bug, on
        # purpose), so it refuses every correct S256 verifier: its codes are minted without PKCE
        # (--endpoint-pkce none), and the race is on the claim alone.
        proc, verdict = run_locust({**locust_env, **server}, tmp_path, "--processes", "2",
                                   "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                                   "--master-port", port, "-u", "16", "-r", "16", "-t", f"{RUN_S}s",
                                   "--endpoint", str(SERVE_TOML), "--endpoint-pkce", "none",
                                   "--csv", str(tmp_path / "run"), "TokenEndpointUser")
    assert proc.returncode == 1, explain(proc)
    assert verdict is not None
    s = verdict["summary"]
    assert s["status"] == "violated" and s["double_won"] > 0, s
    assert verdict["server_concurrency"] == s["server_concurrency"] == 8
    first = verdict["evidence"][0]
    assert f"double win: code index {first['code_index']} won {first['wins']} times" in proc.stdout
    assert "server concurrency 8): VIOLATED" in proc.stdout
    # Both workers got the master's codes and verifiers, and raced them against each other.
    assert len(s["workers"]) == 2 and all(c["wins"] > 0 for c in s["workers"].values()), s["workers"]
    assert s["max_in_flight"] > 8 and not s["unfinished_workers"]  # racers of both in flight at once
    assert verdict["minting"]["minted"] >= s["codes"] > 0
    assert ledger_rows(database, verdict["run_id"]) == {}
    # Locust's own numbers agree: every 200 (a token set, or one shared) in its CSV, written after
    # the judge; and one failure per double-won code, from the master, whatever worker raced it.
    with (tmp_path / "run_stats.csv").open(newline="") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(stats["exchange: won"]["Request Count"]) == s["attempts_won"]
    assert int(stats["single-winner: double win"]["Failure Count"]) == s["double_won"]
    print(f"\nharness serve naive, 16 users over 2 workers: {s['double_won']} of {s['codes']} codes "
          f"double-won, median start spread {s['median_spread_us']:.0f} µs, minting {verdict['minting']}")


def test_faithful_harness_serve_holds_and_leaves_no_row(locust_env: dict[str, str], database: Database,
                                                        tmp_path: Path) -> None:
    before = row_counts(database)
    with served("faithful", database, tmp_path) as server:
        proc, verdict = run_locust({**locust_env, **server}, tmp_path, "-u", "16", "-r", "16",
                                   "-t", f"{RUN_S}s", "--endpoint", str(SERVE_TOML), "TokenEndpointUser")
    assert proc.returncode == 0, explain(proc)
    assert verdict is not None and verdict["valid"]
    s = verdict["summary"]
    assert s["status"] == "holds" and s["double_won"] == 0, s
    assert s["codes_raced"] > 0 and s["raced_fraction"] > 0.9 and s["max_in_flight"] >= 8, s
    assert s["wins"] == s["codes_won"] and s["losses"] > s["wins"], s  # one winner, the rest refused
    assert "claimcheck: endpoint harness serve" in proc.stdout and "PKCE S256" in proc.stdout
    assert "HOLDS" in proc.stdout and "codes minted ahead of their slots" in proc.stdout
    table = proc.stdout + proc.stderr
    assert "exchange: won" in table and "exchange: lost" in table
    # Locust wrote only its ledger rows (removed after the verdict); the server's codes and tokens
    # went with the server's own cleanup: the database is as it was.
    assert "claimcheck: removed the " in proc.stdout
    assert row_counts(database) == before


def test_a_server_declared_serial_proves_nothing(locust_env: dict[str, str], database: Database,
                                                 tmp_path: Path) -> None:
    serial = tmp_path / "serial.toml"
    serial.write_text(SERVE_TOML.read_text().replace("concurrency = 8", "concurrency = 1"))
    with served("faithful", database, tmp_path) as server:
        proc, verdict = run_locust({**locust_env, **server}, tmp_path, "-u", "8", "-r", "8", "-t", "2s",
                                   "--endpoint", str(serial), "TokenEndpointUser")
    assert proc.returncode == 2, explain(proc)
    assert verdict is not None and verdict["summary"]["status"] == "inconclusive"
    assert "server concurrency 1): INCONCLUSIVE: the server runs one request at a time" in proc.stdout


def test_bad_endpoint_input_is_one_line_and_exit_2(locust_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("token_url = 'ftp://nowhere'\n")
    unreachable = {"CLAIMCHECK_SERVER": f"http://127.0.0.1:{free_port()}", "CLAIMCHECK_CLIENT_SECRET": "s"}
    cases = [
        ((), str(tmp_path / "missing.toml"), "no endpoint description at"),
        ((), str(bad), "is not an http(s) URL"),
        (tuple(unreachable.items()), str(SERVE_TOML), "cannot be reached"),
    ]
    for extra_env, path, message in cases:
        proc, verdict = run_locust({**locust_env, **dict(extra_env)}, tmp_path, "-t", "2s",
                                   "--endpoint", path, "TokenEndpointUser", timeout=60)
        errors = [line for line in proc.stderr.splitlines() if "claimcheck: error:" in line]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], explain(proc)
        assert "Traceback" not in proc.stderr and verdict is None, explain(proc)
    proc, _ = run_locust({**locust_env, **unreachable}, tmp_path, "-t", "2s", "--endpoint", str(SERVE_TOML),
                         "DatabaseUser", timeout=60)
    assert proc.returncode == 2 and "--endpoint races TokenEndpointUser only" in proc.stderr, explain(proc)


# -- Authlib, as its documentation builds it, and claiming atomically ---------------------------------


@pytest.mark.parametrize("claim", ["documented", "atomic"])
def test_authlib_2x2_over_locust(claim: str, authlib_database: str, locust_env: dict[str, str],
                                 database: Database, tmp_path: Path) -> None:
    """2 gunicorn processes × 2 threads; a master and a worker started apart (its own environment)."""
    secret = secrets.token_urlsafe(24)
    with start_authlib_server(authlib_database, workers=2, threads=2, claim=claim, secret=secret) as base:
        env = {**locust_env, "AUTHLIB_SERVER": base, "AUTHLIB_CONCURRENCY": "4",
               "AUTHLIB_CLIENT_SECRET": secret, "AUTHLIB_DATABASE_URL": authlib_database}
        port = str(free_port())
        # The worker reads the description the master names, with the secret from its own environment.
        worker = subprocess.Popen([*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        try:
            proc, verdict = run_locust(env, tmp_path, "--master", "--master-bind-host", "127.0.0.1",
                                       "--master-bind-port", port, "--expect-workers", "1",
                                       "-u", "16", "-r", "16", "-t", f"{AUTHLIB_RUN_S}s",
                                       "--endpoint", str(AUTHLIB_TOML), "TokenEndpointUser")
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert verdict is not None, explain(proc)
    s = verdict["summary"]
    print(f"\nAuthlib {claim} 2x2, 16 users: exit {proc.returncode}, {s['double_won']} of {s['codes']} codes "
          f"double-won, {s['wins']} wins, {s['losses']} losses, {s['errors']} errors (5xx), "
          f"{s['attempts']} attempts, median start spread {s['median_spread_us']:.0f} µs, "
          f"minting {verdict['minting']}")
    assert verdict["server_concurrency"] == 4 and s["codes_raced"] > 0, s
    assert ledger_rows(database, verdict["run_id"]) == {}
    if claim == "documented":
        assert proc.returncode == 1, explain(proc)
        assert s["double_won"] > 0 and "VIOLATED" in proc.stdout
    else:
        assert proc.returncode == 0, explain(proc)
        assert s["status"] == "holds" and s["wins"] > 0, s
