"""Locust for real: short headless runs (database, HTTP, distributed) judged by the ledger checker.

Also where the verdict shows besides the terminal: Locust's failures (a double win is one), the
``--csv`` files (their wins are the verdict's), the ``--html`` report; and the refresh race
(``RefreshUser``). The web UI's tab: ``test_locust_ui.py``.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import LOCUST, embedded_env, free_port, interrupt, row_counts

from harness.database import Database, connect
from harness.ledger import (
    PROBE_RACER,
    Attempt,
    LiveTally,
    Win,
    check,
    exit_status,
    inject_report,
    render,
    render_reuse,
    reuse_report,
    verdict_html,
    verdict_rows,
)
from harness.scope import PREFIX
from harness.testing.plugin import throwaway_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_S = 4

pytestmark = pytest.mark.slow


# -- the checker, pure -------------------------------------------------------------------------


def _attempt(code: int, outcome: str, start: int, end: int, racer: str = "r") -> Attempt:
    return Attempt("w", racer, code, outcome, start, end)  # type: ignore[arg-type]


def test_checker_holds_on_one_winner_per_raced_code() -> None:
    attempts = [_attempt(0, "won", 0, 10, "a"), _attempt(0, "lost", 1, 5, "b"),
                _attempt(1, "lost", 20, 25, "a"), _attempt(1, "won", 21, 30, "b")]
    wins = [Win(0, "h0", "w/a", 0, 10), Win(1, "h1", "w/b", 21, 30)]
    result = check(wins, attempts)
    assert result.valid and exit_status(result) == 0
    s = result.summary
    assert (s["status"], s["wins"], s["losses"], s["codes_raced"], s["max_in_flight"]) == (
        "holds", 2, 2, 2, 2)


def test_checker_names_a_code_won_twice() -> None:
    attempts = [_attempt(7, "won", 0, 10, "a"), _attempt(7, "won", 1, 12, "b")]
    wins = [Win(7, "h7", "w/a", 0, 10), Win(7, "h7", "w/b", 1, 12)]
    result = check(wins, attempts)
    assert not result.valid and exit_status(result) == 1
    assert result.summary["double_won_codes"] == [7]
    assert result.evidence[0]["winners"] == ["w/a", "w/b"]
    assert "code index 7 won 2 times" in render(result)


def test_checker_catches_a_double_win_the_ledger_missed() -> None:
    # the second winner's ledger write failed; its own attempt row still says "won"
    attempts = [_attempt(3, "won", 0, 10, "a"), _attempt(3, "won", 1, 12, "b")]
    result = check([Win(3, "h3", "w/a", 0, 10)], attempts)
    assert not result.valid and result.summary["double_won_codes"] == [3]


def test_checker_counts_a_win_whose_ledger_row_is_missing() -> None:
    # code 1's winner could not write its ledger row (the printed verdict said 351 wins for 359):
    # its own attempt row still says "won", and that win counts, once, for its worker
    attempts = [_attempt(0, "won", 0, 10, "a"), _attempt(0, "lost", 1, 5, "b"),
                _attempt(1, "lost", 20, 25, "a"), _attempt(1, "won", 21, 30, "b")]
    result = check([Win(0, "h0", "w/a", 0, 10)], attempts)
    s = result.summary
    assert result.valid and s["status"] == "holds"
    assert (s["wins"], s["codes_won"], s["wins_missing_from_ledger"]) == (2, 2, 1)
    assert s["workers"] == {"w": {"attempts": 4, "wins": 2}}
    assert "wins 2 " in render(result) and "missing from the ledger" in render(result)
    # a win known from both sources is one win; a ledger row whose attempt row was never flushed
    # (its worker was killed) counts too
    both = check([Win(0, "h0", "w/a", 0, 10), Win(1, "h1", "w/b", 21, 30), Win(2, "h2", "v/c", 40, 50)],
                 attempts)
    assert (both.summary["wins"], both.summary["wins_missing_from_ledger"]) == (3, 0)


def test_checker_counts_a_double_win_once_per_racer() -> None:
    # racer b's second win of code 3 reached only the ledger; racer a's, both sources
    attempts = [_attempt(3, "won", 0, 10, "a"), _attempt(3, "lost", 1, 12, "c")]
    wins = [Win(3, "h3", "w/a", 0, 10), Win(3, "h3", "w/b", 1, 11)]
    result = check(wins, attempts)
    assert not result.valid and result.summary["wins"] == 2
    assert result.evidence == [{"code_index": 3, "wins": 2, "winners": ["w/a", "w/b"], "code_hash": "h3"}]


def test_checker_calls_a_run_without_overlap_inconclusive() -> None:
    # one attempt finished before the next started: nothing raced, nothing proven
    attempts = [_attempt(0, "won", 0, 10, "a"), _attempt(0, "lost", 11, 15, "b")]
    result = check([Win(0, "h0", "w/a", 0, 10)], attempts)
    assert result.valid and result.summary["status"] == "inconclusive" and exit_status(result) == 2
    # and a run where all attempts errored has raced but proven nothing either
    errors = [_attempt(0, "error", 0, 10, "a"), _attempt(0, "error", 1, 10, "b")]
    assert check([], errors).summary["status"] == "inconclusive"


def test_the_live_tally_agrees_with_the_checker() -> None:
    """What the web UI shows live follows the verdict's rules: token sets, double wins, overlap."""
    attempts = [_attempt(0, "won", 0, 10, "a"), _attempt(0, "lost", 1, 5, "b"),
                _attempt(0, "lost", 12, 15, "c"), _attempt(1, "won", 20, 30, "a"),
                _attempt(1, "won", 21, 31, "b"), _attempt(2, "lost", 40, 45, "a"),
                _attempt(2, "won", 41, 50, "b")]
    wins = [Win(0, "h0", "w/a", 0, 10), Win(1, "h1", "w/a", 20, 30), Win(1, "h1", "w/b", 21, 31),
            Win(2, "h2", "w/b", 41, 50)]
    live = LiveTally("run")
    newly = [live.add(a) for a in attempts]
    assert newly == [False, False, False, False, True, False, False]  # code 1's second win, once
    judged, seen = check(wins, attempts).summary, live.summary()
    for key in ("status", "wins", "losses", "errors", "attempts", "codes", "codes_won", "codes_raced",
                "raced_fraction", "median_spread_us", "max_in_flight", "double_won", "double_won_codes"):
        assert seen[key] == judged[key], key
    # Over HTTP a win is its token set: two racers answered with one pair are one win.
    shared = LiveTally("run")
    for racer in ("a", "b"):
        assert not shared.add(Attempt("w", racer, 5, "won", 0, 9, None, "sha256:t"))
    assert (shared.summary()["wins"], shared.summary()["double_won"]) == (1, 0)


def test_the_live_tally_forgets_old_starts_but_not_its_counts() -> None:
    live = LiveTally("run", keep=4)
    for code in range(10):
        live.add(_attempt(code, "won", code * 100, code * 100 + 10, "a"))
        live.add(_attempt(code, "lost", code * 100 + 1, code * 100 + 5, "b"))
    # at the 8th code (index 7), the codes more than 4 behind it
    assert sorted(i for i, c in live.codes.items() if c.starts is None) == [0, 1, 2]
    s = live.summary()
    assert (s["codes"], s["codes_raced"], s["wins"], s["max_in_flight"]) == (10, 10, 10, 2)
    assert live.add(_attempt(0, "won", 2, 9, "c"))  # a late second win of a compacted code still counts
    assert live.summary()["double_won_codes"] == [0]


def test_the_reuse_report_says_whether_the_family_was_revoked() -> None:
    """Per raced refresh token: every winner's new token refused (revoked), one accepted (alive)."""
    attempts = [_attempt(0, "won", 0, 10, "a"), _attempt(0, "lost", 1, 5, "b"),
                _attempt(1, "won", 20, 30, "a"), _attempt(1, "lost", 21, 25, "b"),
                _attempt(2, "won", 40, 50, "a"), _attempt(2, "won", 41, 50, "b"),
                _attempt(3, "won", 60, 70, "a"),  # presented once: no reuse, not counted
                _attempt(4, "won", 80, 90, "a"), _attempt(4, "lost", 81, 85, "b")]
    probes = [Attempt("w", PROBE_RACER, 0, "lost", 100, 101), Attempt("w", PROBE_RACER, 1, "won", 100, 101),
              Attempt("w", PROBE_RACER, 2, "lost", 100, 101), Attempt("w", PROBE_RACER, 3, "won", 100, 101)]
    report = reuse_report([], attempts, probes)
    # code 2: two winners, one probe: not every winner's new token was seen refused
    assert {k: report[k] for k in ("reused", "revoked", "alive", "not_probed", "alive_indices")} == {
        "reused": 4, "revoked": 1, "alive": 1, "not_probed": 2, "alive_indices": [1]}
    line = render_reuse(report)
    assert "family revoked (the winner's new token refused) 1  new token still accepted 1" in line
    refresh = check([], attempts[:6], race="refresh")
    assert "VIOLATED: 1 refresh token(s) refreshed more than once" in render(refresh)
    assert "double refresh: refresh token index 2 refreshed 2 times" in render(refresh)


def test_the_verdict_as_tab_rows_and_as_a_report_section() -> None:
    attempts = [_attempt(7, "won", 0, 10, "a"), _attempt(7, "won", 1, 12, "b<script>")]
    result = check([], attempts)
    rows = verdict_rows(result.summary, state="judged", target="naive", run_id="r1")
    values = {r["name"]: r["value"] for r in rows}
    assert values["verdict"] == "VIOLATED: 1 code(s) won more than once"
    assert values["codes won more than once"] == "1: indices 7"
    live = verdict_rows(result.summary, state="live")
    assert live[0]["value"] == "VIOLATED so far: 1 code(s) won more than once"
    section = verdict_html(rows, render(result), status="violated")
    assert "<script>" not in section and "b&lt;script&gt;" in section  # escaped
    report = '<html><script>var a=\'<div id="root"></div>\'</script><body><div id="root"></div></body></html>'
    injected = inject_report(report, section)
    assert injected.index(section) > injected.index("</script>")  # in the body, not in the script
    assert injected.endswith('<div id="root"></div></body></html>')


# -- Locust runs -------------------------------------------------------------------------------




@pytest.fixture
def env(locust_env: dict[str, str], pepper: str) -> dict[str, str]:
    return {**locust_env, "HARNESS_AT_REST_PEPPER": pepper}


def run_locust(env: dict[str, str], tmp_path: Path, *args: str, timeout: float = 120, merged: bool = False
               ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """A headless run; ``merged``: stderr (Locust's tables) into stdout, in the order written."""
    verdict = tmp_path / f"verdict-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [*LOCUST, "--headless", "--only-summary", "--verdict-file", str(verdict), *args],
        cwd=ROOT, env=env, text=True, timeout=timeout, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
    )
    data = json.loads(verdict.read_text()) if verdict.exists() else None
    return proc, data


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{(proc.stderr or '')[-3000:]}"


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    """A Locust CSV (``_stats.csv``, ``_failures.csv``) by its Name column."""
    with path.open(newline="") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def assert_verdict_printed_last(output: str) -> None:
    """The verdict comes after Locust's final tables: nothing but its own lines below its first."""
    lines = output.rstrip().splitlines()
    first = max(i for i, line in enumerate(lines) if line.startswith("single-winner verdict ("))
    while first > 0 and lines[first - 1].startswith(("single-winner verdict (", "  ")):
        first -= 1
    tail = lines[first:]
    assert "Response time percentiles" in "\n".join(lines[:first]), output[-3000:]
    assert all(line.startswith(("single-winner verdict (", "  ")) for line in tail), tail


def rows_of_run(db: Database, run_id: str) -> dict[str, int]:
    """The rows a run left behind: named ``cc-<run id>-…`` (and what hangs off them), or its ledger rows."""
    p = f"{PREFIX}{run_id}-"
    queries = {
        "oauth_auth_codes": "SELECT count(*) FROM oauth_auth_codes "
                            "WHERE starts_with(client_id, %(p)s) OR starts_with(user_id, %(p)s)",
        "oauth_refresh_tokens": "SELECT count(*) FROM oauth_refresh_tokens "
                                "WHERE starts_with(client_id, %(p)s) OR starts_with(user_id, %(p)s)",
        "oauth_clients": "SELECT count(*) FROM oauth_clients WHERE starts_with(client_id, %(p)s)",
        "users": "SELECT count(*) FROM users WHERE starts_with(id, %(p)s)",
        **{t: f"SELECT count(*) FROM {t} WHERE run_id = %(run)s"
           for t in ("harness_ledger", "harness_ledger_attempts", "harness_ledger_workers")},
    }
    with db.connect() as conn:
        counts = {t: conn.execute(q.encode(), {"p": p, "run": run_id}).fetchone() for t, q in queries.items()}
    return {t: int(row[0]) for t, row in counts.items() if row is not None and row[0]}


def assert_no_rows_left(db: Database, verdict: dict[str, Any] | None) -> None:
    assert verdict is not None
    assert rows_of_run(db, verdict["run_id"]) == {}


def assert_holds(proc: subprocess.CompletedProcess[str], verdict: dict[str, Any] | None) -> dict[str, Any]:
    assert proc.returncode == 0, explain(proc)
    assert verdict is not None, explain(proc)
    s: dict[str, Any] = verdict["summary"]
    assert s["status"] == "holds" and verdict["valid"]
    assert s["wins"] > 0 and s["double_won"] == 0
    # the racers really raced: codes with several attempts in flight at once
    assert s["codes_raced"] > 0 and s["max_in_flight"] >= 2, s
    assert s["raced_fraction"] > 0.5, s
    assert "HOLDS" in proc.stdout
    return s


def test_database_users_on_faithful_hold(env: dict[str, str], tmp_path: Path, database: Database) -> None:
    proc, verdict = run_locust(env, tmp_path, "-u", "16", "-r", "16", "-t", f"{RUN_S}s",
                               "--target", "faithful", "DatabaseUser")
    s = assert_holds(proc, verdict)
    assert "claimcheck: target faithful (from --target)" in proc.stdout
    assert_no_rows_left(database, verdict)
    # every raced code had one winner and the others lost
    assert s["losses"] >= s["wins"]
    table = proc.stdout + proc.stderr  # Locust logs its table; the verdict is printed
    assert "exchange: won" in table and "exchange: lost" in table


def test_database_users_on_naive_fail_and_name_the_codes(env: dict[str, str], tmp_path: Path,
                                                         database: Database) -> None:
    """Exit 1, the codes named; and the double wins are Locust failures, in its table, its CSV and
    its HTML report, and the verdict is the last thing printed."""
    proc, verdict = run_locust(env, tmp_path, "-u", "16", "-r", "16", "-t", f"{RUN_S}s",
                               "--target", "naive", "--csv", str(tmp_path / "run"),
                               "--html", str(tmp_path / "run.html"), "DatabaseUser", merged=True)
    assert proc.returncode == 1, explain(proc)
    assert_no_rows_left(database, verdict)
    assert verdict is not None
    s = verdict["summary"]
    assert s["status"] == "violated" and s["double_won"] > 0
    assert s["double_won_codes"] and len(verdict["evidence"]) == s["double_won"]
    first = verdict["evidence"][0]
    assert first["wins"] >= 2 and len(first["winners"]) >= 2
    assert f"double win: code index {first['code_index']} won" in proc.stdout
    assert "VIOLATED" in proc.stdout
    assert_verdict_printed_last(proc.stdout)
    # Locust's failures: one per double-won code, not "0 (0.00%)"
    failures = csv_rows(tmp_path / "run_failures.csv")
    assert int(failures["single-winner: double win"]["Occurrences"]) == s["double_won"], failures
    stats = csv_rows(tmp_path / "run_stats.csv")
    assert int(stats["single-winner: double win"]["Failure Count"]) == s["double_won"]
    assert int(stats["Aggregated"]["Failure Count"]) == s["double_won"]
    assert int(stats["exchange: won"]["Request Count"]) == s["wins"]  # the CSV counts the verdict's wins
    table = proc.stdout.split("Response time percentiles")[0]
    assert "CHECK    single-winner: double win" in table and "0(0.00%)" not in table.splitlines()[-2]
    report = (tmp_path / "run.html").read_text()
    assert 'id="claimcheck-verdict"' in report
    assert f"VIOLATED: {s['double_won']} code(s) won more than once" in report
    assert "single-winner: double win" in report  # Locust's own failures table, in the report


@pytest.mark.parametrize("target", ["naive", "faithful", "hardened"])
def test_refresh_users_race_one_refresh_token_per_slot(target: str, env: dict[str, str], tmp_path: Path,
                                                       database: Database) -> None:
    """RefreshUser: naive's non-atomic refresh claim refreshes a token twice (exit 1); faithful and
    hardened hold. Reported beside it: hardened's reuse detection revokes the whole family, the
    winner's new token included; faithful's may run before that new token is stored."""
    proc, verdict = run_locust(env, tmp_path, "-u", "16", "-r", "16", "-t", f"{RUN_S}s", "--target", target,
                               "--csv", str(tmp_path / "run"), "RefreshUser", merged=True)
    assert verdict is not None, explain(proc)
    s, reuse = verdict["summary"], verdict["reuse_detection"]
    assert verdict["race"] == s["race"] == "refresh" and verdict["target"] == target
    assert s["codes_raced"] > 0 and s["max_in_flight"] >= 2, s
    assert verdict["seeding"]["minted"] >= s["codes"] > 0, verdict["seeding"]
    assert reuse["reused"] > 0 and reuse["revoked"] + reuse["alive"] + reuse["not_probed"] == reuse["reused"]
    stats = csv_rows(tmp_path / "run_stats.csv")
    assert int(stats["refresh: won"]["Request Count"]) == s["attempts_won"]
    assert "reuse detection (RFC 9700 §4.14.2)" in proc.stdout
    assert_verdict_printed_last(proc.stdout)
    assert_no_rows_left(database, verdict)  # the codes, refresh tokens (probes' too), ledger rows
    print(f"\nRefreshUser on {target}: exit {proc.returncode}, {s['double_won']} of {s['codes']} tokens "
          f"refreshed twice, {s['wins']} wins; reuse detection {reuse}")
    if target == "naive":
        assert proc.returncode == 1, explain(proc)
        assert s["status"] == "violated" and s["double_won"] > 0
        first = verdict["evidence"][0]
        assert f"double refresh: refresh token index {first['code_index']} refreshed" in proc.stdout
        failures = csv_rows(tmp_path / "run_failures.csv")
        assert int(failures["single-winner: double refresh"]["Occurrences"]) == s["double_won"]
        # naive's reuse detection deletes the presented token only: the new ones live on
        assert reuse["alive"] > 0
        return
    assert proc.returncode == 0, explain(proc)
    assert s["status"] == "holds" and s["wins"] == s["codes_won"], s  # one new token per token
    assert "single-winner: double refresh" not in (tmp_path / "run_failures.csv").read_text()
    if target == "hardened":
        # consume and issue in one transaction, under the row's lock: every racer that comes
        # after the winner tombstones the family, the new token included
        assert reuse["revoked"] == reuse["reused"] and reuse["alive"] == 0, reuse


def test_harness_target_beats_the_config_file(env: dict[str, str], tmp_path: Path) -> None:
    """The negative control chosen by the environment is applied: locust.conf does not override it."""
    proc, verdict = run_locust({**env, "HARNESS_TARGET": "naive"}, tmp_path,
                               "-u", "8", "-r", "8", "-t", "3s", "DatabaseUser", timeout=60)
    assert proc.returncode == 1, explain(proc)  # double wins caught, not a faithful HOLDS
    assert verdict is not None and verdict["target"] == "naive" and verdict["summary"]["double_won"] > 0
    assert "claimcheck: target naive (from HARNESS_TARGET)" in proc.stdout  # said at the start
    assert "single-winner verdict (target naive," in proc.stdout  # and in the verdict
    # and --target beats HARNESS_TARGET (refused before anything runs)
    proc, _ = run_locust({**env, "HARNESS_TARGET": "naive"}, tmp_path, "-t", "2s", "--target", "nope",
                         "DatabaseUser", timeout=60)
    assert proc.returncode == 2 and "unknown target 'nope'" in proc.stderr, explain(proc)


def test_a_lone_user_races_nothing_and_does_not_pass(env: dict[str, str], tmp_path: Path) -> None:
    proc, verdict = run_locust(env, tmp_path, "-u", "1", "-r", "1", "-t", "2s", "DatabaseUser")
    assert proc.returncode == 2, explain(proc)
    assert verdict is not None and verdict["summary"]["status"] == "inconclusive"
    assert "INCONCLUSIVE" in proc.stdout
    assert "claimcheck: target faithful (the default)" in proc.stdout


def test_setup_errors_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    no_pepper = {k: v for k, v in env.items() if k != "HARNESS_AT_REST_PEPPER"}
    proc, _ = run_locust(no_pepper, tmp_path, "-t", "2s", "DatabaseUser", timeout=60)
    assert proc.returncode == 2 and "HARNESS_AT_REST_PEPPER" in proc.stderr, explain(proc)
    proc, _ = run_locust(env, tmp_path, "-t", "2s", "--target", "nope", "DatabaseUser", timeout=60)
    assert proc.returncode == 2 and "unknown target" in proc.stderr, explain(proc)
    proc, _ = run_locust(env, tmp_path, "-t", "2s", "TokenEndpointUser", timeout=60)
    assert proc.returncode == 2 and "--host" in proc.stderr, explain(proc)
    proc, _ = run_locust(env, tmp_path, "-t", "2s", "RefreshUser", "DatabaseUser", timeout=60)
    assert proc.returncode == 2 and "RefreshUser races refresh tokens" in proc.stderr, explain(proc)


@pytest.mark.parametrize("slot", ["nan", "inf", "-1", "0"])
def test_a_slot_that_is_no_duration_exits_2_with_one_line(env: dict[str, str], tmp_path: Path,
                                                          slot: str) -> None:
    proc, verdict = run_locust(env, tmp_path, "-t", "2s", "--slot-ms", slot, "DatabaseUser", timeout=60)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().splitlines() == [
        f"locust: error: argument --slot-ms: must be a finite number of milliseconds, at least 1 "
        f"(got '{slot}')"], explain(proc)
    assert verdict is None and not proc.stdout


def test_a_database_without_the_schema_exits_2(env: dict[str, str], tmp_path: Path,
                                               database: Database) -> None:
    """On a database given by URL the schema is never created unasked: one line, exit 2."""
    with throwaway_database(database.url) as bare:
        proc, _ = run_locust({**env, "HARNESS_DATABASE_URL": bare}, tmp_path, "-t", "2s",
                             "DatabaseUser", timeout=60)
        with psycopg.connect(bare, autocommit=True, connect_timeout=5) as conn:  # nothing was created
            tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_schema = current_schema()").fetchone()
    assert proc.returncode == 2, explain(proc)
    assert "claimcheck: error: the database" in proc.stderr and "harness db migrate" in proc.stderr
    assert "Traceback" not in proc.stderr, explain(proc)
    assert tables is not None and tables[0] == 0


def test_runs_leave_no_row_on_a_fresh_cluster(pg_data_dir: Path, pepper: str, tmp_path: Path) -> None:
    """The safety contract: whatever the verdict, a run deletes every row it wrote, and only those."""
    env = {**embedded_env(pg_data_dir), "HARNESS_AT_REST_PEPPER": pepper, "PYTHONUNBUFFERED": "1"}
    env.pop("HARNESS_TARGET", None)
    # The test holds the server (a lease), so the three runs join it instead of each starting one.
    with connect(data_dir=pg_data_dir) as db:
        before = row_counts(db)
        assert set(before.values()) == {0}, before
        for args, status in [(("--target", "faithful", "-u", "8"), 0), (("--target", "naive", "-u", "8"), 1),
                             (("-u", "1"), 2)]:
            proc, verdict = run_locust(env, tmp_path, *args, "-r", "8", "-t", "3s", "DatabaseUser",
                                       timeout=60)
            assert proc.returncode == status, explain(proc)  # the exit status is the verdict's
            assert verdict is not None and verdict["exit_status"] == status
            assert row_counts(db) == before, (args, row_counts(db))
            assert "claimcheck: removed the " in proc.stdout


def test_ctrl_c_mid_run_judges_and_removes_the_run(env: dict[str, str], tmp_path: Path,
                                                   database: Database) -> None:
    verdict_file = tmp_path / "verdict.json"
    proc = subprocess.Popen(
        [*LOCUST, "--headless", "--only-summary", "--verdict-file", str(verdict_file),
         "-u", "8", "-r", "8", "-t", "60s", "--target", "naive", "DatabaseUser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(5)  # racing by now
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out[-3000:]  # what raced until Ctrl-C is still judged
    verdict = json.loads(verdict_file.read_text())
    assert verdict["summary"]["double_won"] > 0
    assert_no_rows_left(database, verdict)


@pytest.fixture
def server(env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[str]:
    """``harness serve`` in a subprocess (target from the test's ``target`` param); yields its URL."""
    target = getattr(request, "param", "faithful")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "harness"), "serve", "--target", target, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    assert json.load(resp)["target"] == target
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read() if proc.stdout else ""
                    raise AssertionError(f"harness serve did not come up: {output}") from exc
                time.sleep(0.2)
        yield url
    finally:
        interrupt(proc, timeout=15)


@pytest.mark.parametrize("server", ["faithful", "naive"], indirect=True)
def test_http_users_against_harness_serve(server: str, env: dict[str, str], tmp_path: Path,
                                          request: pytest.FixtureRequest, database: Database) -> None:
    target = request.node.callspec.params["server"]
    proc, verdict = run_locust(env, tmp_path, "-u", "16", "-r", "16", "-t", f"{RUN_S}s",
                               "--host", server, "TokenEndpointUser")
    assert_no_rows_left(database, verdict)
    if target == "faithful":
        assert_holds(proc, verdict)
        assert verdict is not None and verdict["target"] == "faithful"  # read from /healthz
    else:
        assert proc.returncode == 1, explain(proc)
        assert verdict is not None and verdict["summary"]["double_won"] > 0


def assert_every_worker_counted(s: dict[str, Any], workers: int) -> None:
    assert len(s["workers"]) == workers, s["workers"]
    assert all(c["wins"] > 0 and c["attempts"] > 0 for c in s["workers"].values()), s["workers"]
    assert sum(c["wins"] for c in s["workers"].values()) == s["wins"]
    assert sum(c["attempts"] for c in s["workers"].values()) == s["attempts"]
    assert not s["unfinished_workers"]


def test_processes_2_counts_every_worker(env: dict[str, str], tmp_path: Path, database: Database) -> None:
    port = str(free_port())  # not Locust's default 5557: other runs may be using it
    proc, verdict = run_locust(env, tmp_path, "--processes", "2", "--master-bind-host", "127.0.0.1",
                               "--master-bind-port", port, "--master-port", port,
                               "-u", "16", "-r", "16", "-t", f"{RUN_S}s", "--csv", str(tmp_path / "run"),
                               "DatabaseUser")
    s = assert_holds(proc, verdict)
    assert_every_worker_counted(s, 2)
    assert_no_rows_left(database, verdict)
    # The workers are stopped before they are quit: their last stats reach the master's CSV.
    assert int(csv_rows(tmp_path / "run_stats.csv")["exchange: won"]["Request Count"]) == s["wins"]


def test_master_and_two_workers(env: dict[str, str], tmp_path: Path, database: Database) -> None:
    port = str(free_port())
    workers = [
        subprocess.Popen([*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        proc, verdict = run_locust(env, tmp_path, "--master", "--master-bind-host", "127.0.0.1",
                                   "--master-bind-port", port, "--expect-workers", "2",
                                   "-u", "16", "-r", "16", "-t", f"{RUN_S}s", "DatabaseUser")
        assert_every_worker_counted(assert_holds(proc, verdict), 2)
        assert_no_rows_left(database, verdict)
        for w in workers:
            assert w.wait(timeout=30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def test_a_worker_killed_mid_run_leaves_the_invariant_judged(env: dict[str, str], tmp_path: Path,
                                                             database: Database) -> None:
    """DESIGN.md "Bad input and faults": a killed worker does not hang the master or break the verdict."""
    port = str(free_port())
    env = {**env, "HARNESS_WORKER_REPORT_TIMEOUT_S": "3"}
    workers = [
        subprocess.Popen([*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    verdict_file = tmp_path / "verdict.json"
    master = subprocess.Popen(
        [*LOCUST, "--headless", "--only-summary", "--verdict-file", str(verdict_file), "--master",
         "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--expect-workers", "2",
         "-u", "16", "-r", "16", "-t", "12s", "DatabaseUser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Users spawned and racing on both workers (each has registered in the ledger), however
        # long seeding took on a loaded machine: a fixed sleep made this flaky under load.
        deadline = time.monotonic() + 60
        while True:
            with database.connect() as conn:
                row = conn.execute("SELECT count(*) FROM harness_ledger_workers WHERE state = 'started'"
                                   ).fetchone()
                wins = conn.execute("SELECT count(*) FROM harness_ledger").fetchone()
            if row and row[0] >= 2 and wins and wins[0] > 0:
                break
            assert master.poll() is None and time.monotonic() < deadline, "the workers never raced"
            time.sleep(0.2)
        assert master.poll() is None, "the run ended before the worker could be killed"
        workers[0].kill()  # SIGKILL: no goodbye, no last batch
        out, _ = master.communicate(timeout=90)  # never a hang
        assert master.returncode == 0, out[-3000:]
        verdict = json.loads(verdict_file.read_text())
        s = verdict["summary"]
        assert s["status"] == "holds" and s["double_won"] == 0, s
        assert s["wins"] > 0 and s["codes_raced"] > 0, s
        # the killed worker's wins up to its death are in the ledger; it is reported, not hidden
        assert len(s["unfinished_workers"]) == 1, s
        assert "never finished reporting" in out
        assert_no_rows_left(database, verdict)  # the dead worker's rows too
    finally:
        for p in [*workers, master]:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_csv_and_html_reports(env: dict[str, str], tmp_path: Path) -> None:
    """The CSV is written after the judge: its wins and attempts are the verdict's (they were 574
    for 575); the HTML report opens with the verdict; the verdict is printed last."""
    proc, verdict = run_locust(env, tmp_path, "-u", "8", "-r", "8", "-t", "2s",
                               "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "run.html"),
                               "DatabaseUser", merged=True)
    s = assert_holds(proc, verdict)
    stats = csv_rows(tmp_path / "run_stats.csv")
    assert int(stats["exchange: won"]["Request Count"]) == s["wins"]
    assert int(stats["exchange: lost"]["Request Count"]) == s["losses"]
    assert int(stats["Aggregated"]["Request Count"]) == s["attempts"]
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    assert "single-winner: double win" not in (tmp_path / "run_failures.csv").read_text()
    report = (tmp_path / "run.html").read_text()
    assert "exchange: won" in report
    assert 'id="claimcheck-verdict"' in report and "HOLDS: no code was won twice" in report
    assert verdict is not None and f"(target faithful, run {verdict['run_id']})" in report  # the text
    assert_verdict_printed_last(proc.stdout)


def test_web_ui_run_is_judged_and_served(env: dict[str, str], tmp_path: Path, database: Database) -> None:
    port = free_port()
    verdict = tmp_path / "verdict.json"
    proc = subprocess.Popen(
        [*LOCUST, "--autostart", "--autoquit", "3", "-u", "8", "-r", "8", "-t", "2s",
         "--web-host", "127.0.0.1", "--web-port", str(port), "--verdict-file", str(verdict), "DatabaseUser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    served: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/claimcheck/verdict", timeout=2) as r:
                served = json.load(r)
            if "summary" in served:
                break
        except OSError:
            pass
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-2000:]}"
    assert served.get("summary", {}).get("status") == "holds", served
    assert json.loads(verdict.read_text())["run_id"] == served["run_id"]
    assert_no_rows_left(database, served)
