"""Locust for real: short headless runs (database, HTTP, distributed) judged by the ledger checker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import embedded_env, interrupt, row_counts

from harness.database import Database, connect
from harness.ledger import Attempt, Win, check, exit_status, render
from harness.scope import PREFIX
from harness.testing.plugin import throwaway_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCUST = [str(BIN / "locust"), "--config", str(ROOT / "load" / "locust.conf"),
          "-f", str(ROOT / "load" / "locustfile.py")]
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


# -- Locust runs -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(database: Database, pepper: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("HARNESS_TARGET", "DATABASE_URL", "LOCUST_USER_CLASSES")}
    e.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER=pepper,
             PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}")
    return e


def run_locust(env: dict[str, str], tmp_path: Path, *args: str,
               timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    verdict = tmp_path / f"verdict-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [*LOCUST, "--headless", "--only-summary", "--verdict-file", str(verdict), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    data = json.loads(verdict.read_text()) if verdict.exists() else None
    return proc, data


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


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
    proc, verdict = run_locust(env, tmp_path, "-u", "16", "-r", "16", "-t", f"{RUN_S}s",
                               "--target", "naive", "DatabaseUser")
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
                               "-u", "16", "-r", "16", "-t", f"{RUN_S}s", "DatabaseUser")
    assert_every_worker_counted(assert_holds(proc, verdict), 2)
    assert_no_rows_left(database, verdict)


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
         "-u", "16", "-r", "16", "-t", "8s", "DatabaseUser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(5)  # users spawned and racing on both workers
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
    proc, verdict = run_locust(env, tmp_path, "-u", "8", "-r", "8", "-t", "2s",
                               "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "run.html"),
                               "DatabaseUser")
    assert_holds(proc, verdict)
    stats = (tmp_path / "run_stats.csv").read_text()
    assert "exchange: won" in stats and "exchange: lost" in stats
    assert "exchange: won" in (tmp_path / "run.html").read_text()


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
