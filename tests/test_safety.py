"""The safety contract (issue 8): someone else's database and machine, Ctrl-C, dead racers, bad input.

A "staging" database is made in the session's server with the claimcheck schema, foreign rows in
every table and an unrelated table that references ``users``. Every command is run against it as a
reviewer would (``HARNESS_DATABASE_URL``), and afterwards every table is byte-identical: nothing
foreign changed, nothing of the harness's is left.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from conftest import embedded_env
from psycopg import conninfo, sql

from harness.database import Database
from harness.embedded import EmbeddedServer, live_server_processes

pytestmark = pytest.mark.slow
HARNESS = [sys.executable, "-m", "harness"]
ROOT = Path(__file__).resolve().parents[1]
TABLES = ("users", "oauth_clients", "oauth_refresh_tokens", "oauth_auth_codes", "harness_ledger",
          "harness_ledger_attempts", "harness_ledger_workers", "invoices")
PEPPER = "safety-pepper"


def dump(url: str) -> dict[str, list[str]]:
    """Every row of every table that matters, as PostgreSQL's text form, sorted."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {t: [r[0] for r in conn.execute(
            sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(t)))]
            for t in TABLES}


def harness_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE id LIKE 'cc-%') + "
            "(SELECT count(*) FROM oauth_clients WHERE client_id LIKE 'cc-%') + "
            "(SELECT count(*) FROM oauth_auth_codes WHERE client_id LIKE 'cc-%') + "
            "(SELECT count(*) FROM oauth_refresh_tokens WHERE client_id LIKE 'cc-%')").fetchone()
    return int(row[0]) if row else -1


def make_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fill_with_foreign_rows(url: str) -> None:
    """What a staging database holds: real-looking rows everywhere, and a table of another app."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES ('alice', 'Alice'), ('bob', 'Bob'), "
                     "('race-user', 'named like a harness user'), ('bench-user', 'also')")
        conn.execute("INSERT INTO oauth_clients (client_id, client_secret_hash) VALUES "
                     "('prod-app', 'abc'), ('race-client', NULL), ('bench-client', NULL), "
                     "('client-a', NULL)")
        conn.execute("INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, expires_at, "
                     "family_id) VALUES ('tok-1', 'prod-app', 'alice', 'openid', now() - interval '1 day', "
                     "'fam-1'), ('tok-2', 'race-client', 'race-user', 'openid', now() + interval '1 day', "
                     "'fam-2')")
        conn.execute("INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, "
                     "expires_at, refresh_token_id) VALUES ('code-1', 'prod-app', 'alice', "
                     "'https://prod/cb', 'openid', now() + interval '1 hour', 'tok-1'), "
                     "('1000000000000001', 'bench-client', 'bench-user', 'https://x/cb', 'openid', "
                     "now() + interval '1 day', NULL)")
        conn.execute("INSERT INTO harness_ledger (run_id, code_index, code_hash, winner) "
                     "VALUES ('someone-elses-run', 0, 'h', 'w')")
        conn.execute("CREATE TABLE invoices (id serial PRIMARY KEY, user_id text NOT NULL "
                     "REFERENCES users(id) ON DELETE CASCADE, amount int)")
        conn.execute("INSERT INTO invoices (user_id, amount) VALUES ('alice', 10), ('race-user', 20)")


@pytest.fixture
def staging(database: Database) -> Iterator[str]:
    """A database the harness did not create, with its schema (``harness db migrate``) and foreign rows."""
    name = f"staging_{secrets.token_hex(4)}"
    url = make_database(database.url, name)
    try:
        migrated = run("db", "migrate", url=url)
        assert migrated.returncode == 0, migrated.stderr
        fill_with_foreign_rows(url)
        yield url
    finally:
        drop_database(database.url, name)


def run(*args: str, url: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET")}
    environ["HARNESS_AT_REST_PEPPER"] = PEPPER
    if url is not None:
        environ["HARNESS_DATABASE_URL"] = url
    environ.update(env or {})
    return subprocess.run([*HARNESS, *args], env=environ, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


COMMANDS: list[tuple[list[str], int]] = [
    (["scan", "--all-targets", "--only", "pkce.appendix-b", "code.client-binding",
      "replay.revokes-family", "refresh.rotation", "at-rest.no-raw-secrets", "race.single-winner"], 1),
    (["race", "--racers", "4", "--codes", "20", "--no-progress"], 0),
    (["race", "--target", "naive", "--racers", "4", "--codes", "10", "--no-progress"], 1),
    (["matrix", "--racers", "4", "--codes", "10", "--strategy", "atomic", "--isolation",
      "read_committed", "--no-progress"], 0),
    (["demo", "--racers", "4", "--codes", "20"], 0),
]


def test_every_command_leaves_a_foreign_database_byte_identical(staging: str) -> None:
    before = dump(staging)
    for args, expected in COMMANDS:
        done = run(*args, url=staging)
        assert done.returncode == expected, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert dump(staging) == before, f"{args[0]} changed the staging database"
    assert harness_rows(staging) == 0


def test_the_test_plugin_never_touches_a_database_url(database: Database, staging: str) -> None:
    # Issue 8, item 1: with HARNESS_DATABASE_URL (or only DATABASE_URL) set, the plugin truncated
    # every table, the unrelated `invoices` included.
    before = dump(staging)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_grants.py"],
        env={**os.environ, "HARNESS_DATABASE_URL": staging, "DATABASE_URL": staging},
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "ignored DATABASE_URL, HARNESS_DATABASE_URL" in done.stdout
    assert dump(staging) == before


def test_a_server_url_is_used_only_in_a_throwaway_database(database: Database, staging: str) -> None:
    before = dump(staging)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_grants.py",
         "--harness-server-url", staging],
        env=dict(os.environ), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "throwaway on" in done.stdout
    assert dump(staging) == before
    with psycopg.connect(staging, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'claimcheck_test_%'"
                            ).fetchall()
    assert left == []  # the session dropped its throwaway database


def test_database_url_of_other_applications_is_never_read(staging: str, pg_data_dir: Path) -> None:
    # Issue 8, item 7: a plain DATABASE_URL set for another application received the harness's writes.
    before = dump(staging)
    done = run("scan", "--target", "hardened", "--only", "pkce.appendix-b",
               env={"DATABASE_URL": staging, "HARNESS_DATA_DIR": str(pg_data_dir)})
    assert done.returncode == 0, done.stderr
    assert dump(staging) == before
    assert not EmbeddedServer(pg_data_dir).status().running  # the run's own server, stopped again


def test_no_schema_is_created_unasked_and_problems_are_one_line(database: Database) -> None:
    # Issue 8, item 5: every command created the schema in the target database without asking;
    # a conflicting users(id bigint) or a least-privilege role died with a traceback, exit 1.
    name = f"bare_{secrets.token_hex(4)}"
    url = make_database(database.url, name)
    try:
        done = run("scan", "--target", "faithful", "--only", "pkce.appendix-b", url=url)
        assert done.returncode == 2 and "harness db migrate" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                ).fetchone() == (0,)
            conn.execute("CREATE TABLE users (id bigint PRIMARY KEY)")
        for args in (["db", "migrate"], ["race", "--codes", "2", "--no-progress"]):
            done = run(*args, url=url)
            assert done.returncode == 2, done
            assert "users.id is bigint" in done.stderr and "Traceback" not in done.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE users")
        assert run("db", "migrate", url=url).returncode == 0
        with psycopg.connect(url, autocommit=True) as conn:
            indexes = [r[0] for r in conn.execute(
                "SELECT indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname LIKE 'idx_oauth_%'")]
            assert indexes and all(indexes)  # built CONCURRENTLY, all valid
            conn.execute("CREATE ROLE cc_reader LOGIN")
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO cc_reader")
        reader = conninfo.make_conninfo(url, user="cc_reader")
        done = run("scan", "--target", "faithful", "--only", "pkce.appendix-b", url=reader)
        assert done.returncode == 2 and "privilege" in done.stderr, done.stderr
    finally:
        drop_database(database.url, name)
        with psycopg.connect(database.url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS cc_reader")


def racer_pids(parent: int) -> list[int]:
    """The racer processes ``parent`` started (not another suite's, on a shared machine)."""
    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p.pid for p in children if "harness._racer" in " ".join(p.cmdline())]


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def start_race(url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
    env.update(HARNESS_DATABASE_URL=url, HARNESS_AT_REST_PEPPER=PEPPER)
    # A session of its own, so that a signal to its group is what a terminal's Ctrl-C is.
    return subprocess.Popen([*HARNESS, "race", "--racers", "6", "--codes", "3000", "--no-progress",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_racing(proc: subprocess.Popen[str], url: str, timeout: float = 60) -> None:
    """Until some race code has been claimed (the racers are racing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM oauth_auth_codes WHERE used_at IS NOT NULL "
                               "AND client_id LIKE 'cc-%'").fetchone()
        if row and row[0] > 20:
            return
        time.sleep(0.2)
    raise AssertionError("the race never started")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_interrupt_stops_a_race_within_seconds_with_a_partial_report(
        staging: str, signum: int) -> None:
    # Issue 8, item 12: Ctrl-C hung in about half the tries and printed racer tracebacks;
    # SIGTERM left the forkserver, resource tracker and racers orphaned, and a /tmp/pymp-* dir.
    before = dump(staging)
    pymp = set(Path("/tmp").glob("pymp-*"))
    proc = start_race(staging)
    wait_for_racing(proc, staging)
    racers = racer_pids(proc.pid)
    assert racers
    sent = time.monotonic()
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    print(f"\n{signal.Signals(signum).name}: exited {proc.returncode} after {took:.2f} s")
    assert proc.returncode == 130, err
    assert took < 5  # bounded, not a benchmark: the racers get 1 s to stop, then are killed
    assert "verdict      INTERRUPTED" in out and "partial" in err
    assert "Traceback" not in err
    assert alive(racers) == []
    assert set(Path("/tmp").glob("pymp-*")) <= pymp
    assert dump(staging) == before


def test_a_killed_racer_ends_the_race_with_a_report(staging: str) -> None:
    # Issue 8, item 11: SIGKILL of one racer hung `harness race` forever.
    proc = start_race(staging)
    wait_for_racing(proc, staging)
    racers = racer_pids(proc.pid)
    os.kill(racers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "racer process died mid-race" in out and "killed by signal 9" in out
    assert "verdict      INCOMPLETE" in out
    assert alive(racers) == []
    assert harness_rows(staging) == 0


def test_racers_die_with_a_killed_parent(staging: str) -> None:
    proc = start_race(staging)
    wait_for_racing(proc, staging)
    racers = racer_pids(proc.pid)
    assert racers
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(racers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(racers) == []


HOLD = """
import sys, time, harness
with harness.connect() as db:
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
    with db.connect() as conn:
        conn.execute("SELECT count(*) FROM oauth_auth_codes").fetchone()
print("done", flush=True)
"""


def test_two_runs_share_the_embedded_server_without_stopping_it_under_each_other(
        pg_data_dir: Path) -> None:
    # Issue 8, item 13: the first of two main jobs stopped the shared server under the second.
    env = embedded_env(pg_data_dir)
    first = subprocess.Popen([sys.executable, "-c", HOLD, "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert first.stdout is not None and first.stdout.readline().strip() == "ready"
    second = subprocess.Popen([sys.executable, "-c", HOLD, "4"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert EmbeddedServer(pg_data_dir).status().running  # the second still uses it
    out2, err2 = second.communicate(timeout=60)
    assert second.returncode == 0 and out2.split() == ["ready", "done"], err2
    assert live_server_processes(pg_data_dir) == []  # the last one out stopped it


def test_interrupting_the_main_job_stops_the_server_it_started(pg_data_dir: Path) -> None:
    # Issue 8, item 12: Ctrl-C during `python3 dev.py run` left the embedded PostgreSQL running.
    env = embedded_env(pg_data_dir)
    env["HARNESS_AT_REST_PEPPER"] = PEPPER
    proc = subprocess.Popen([sys.executable, str(ROOT / "dev.py"), "run"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    family: set[int] = set()
    deadline = time.monotonic() + 60
    while not EmbeddedServer(pg_data_dir).status().running and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # into the scan
    family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    print(f"\ndev.py run: exited {proc.returncode} {took:.2f} s after Ctrl-C")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert live_server_processes(pg_data_dir) == []
    assert alive(sorted(family)) == []  # no orphan: every process of the job has exited


@pytest.mark.parametrize(("args", "message"), [
    (["race", "--timeout", "nan"], "--timeout must be a positive number"),
    (["race", "--timeout", "inf"], "--timeout must be a positive number"),
    (["scan", "--target", ":"], "package.module:factory"),
    (["scan", "--target", "test_safety_targets:nope"], "has no callable"),
    (["scan", "--target", "test_safety_targets_raise_on_import:make"], "ZeroDivisionError"),
    (["scan", "--target", "test_safety_targets:raising_factory"], "the factory raised"),
    (["race", "--target", "os:system", "--codes", "2"], "factory rejected its arguments"),
])
def test_bad_targets_and_options_exit_2_with_one_line(staging: str, args: list[str], message: str,
                                                      tmp_path: Path) -> None:
    (tmp_path / "test_safety_targets.py").write_text(
        "def raising_factory(db, **kw):\n    raise RuntimeError('no')\n")
    (tmp_path / "test_safety_targets_raise_on_import.py").write_text("1 / 0\n")
    done = run(*args, url=staging, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_target_whose_every_call_raises_is_reported_not_a_traceback(staging: str,
                                                                      tmp_path: Path) -> None:
    (tmp_path / "broken_target.py").write_text(
        "from harness.repository import OAuthRepository\n"
        "class Broken(OAuthRepository):\n"
        "    def exchange_code(self, *a, **k):\n        raise RuntimeError('boom')\n"
        "    def validate_authorization_code(self, *a, **k):\n        raise RuntimeError('boom')\n"
        "def make(db, **kw):\n    return Broken(db, **kw)\n")
    for args in (["race", "--racers", "3", "--codes", "5", "--no-progress"],
                 ["matrix", "--racers", "3", "--codes", "5", "--strategy", "atomic", "--no-progress"]):
        done = run(*args, "--target", "broken_target:make", url=staging,
                   env={"PYTHONPATH": str(tmp_path)})
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr
    assert harness_rows(staging) == 0


def test_arguments_that_are_not_utf8_exit_2(staging: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
    env.update(HARNESS_DATABASE_URL=staging, HARNESS_AT_REST_PEPPER=PEPPER)
    for args in ([b"race", b"--seed", b"\xff\xfe"], [b"scan", b"--pepper", b"\xff"]):
        done = subprocess.run([sys.executable.encode(), b"-m", b"harness", *args], env=env,
                              capture_output=True, timeout=60)
        assert done.returncode == 2, done
        assert b"not valid UTF-8" in done.stderr and b"Traceback" not in done.stderr
    bad_env = {**env, "HARNESS_DATABASE_URL": staging + "\udcff"}
    done = subprocess.run([*HARNESS, "race"], env={k: v.encode("utf-8", "surrogateescape")
                                                   for k, v in bad_env.items()},  # type: ignore[misc]
                          capture_output=True, timeout=60)
    assert done.returncode == 2 and b"not valid UTF-8" in done.stderr


def test_a_target_that_hangs_is_stopped_at_the_timeout(staging: str, tmp_path: Path) -> None:
    # Issue 8: `race --target mod:hangs --timeout 5` hung past its timeout.
    (tmp_path / "hanging_target.py").write_text(
        "import time\n"
        "from harness.repository import OAuthRepository\n"
        "class Hangs(OAuthRepository):\n"
        "    def exchange_code(self, *a, **k):\n        time.sleep(3600)\n"
        "def make(db, **kw):\n    return Hangs(db, **kw)\n")
    started = time.monotonic()
    done = run("race", "--target", "hanging_target:make", "--racers", "3", "--codes", "5",
               "--timeout", "5", "--no-progress", url=staging, env={"PYTHONPATH": str(tmp_path)},
               timeout=120)
    took = time.monotonic() - started
    print(f"\nhanging target: exit {done.returncode} after {took:.1f} s (--timeout 5)")
    assert done.returncode == 1, done
    assert "timed out after 5 s" in done.stdout and "verdict      INCOMPLETE" in done.stdout
    assert took < 30
    assert harness_rows(staging) == 0
