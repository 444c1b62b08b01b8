"""``harness db start|status|url|stop|delete|migrate`` as a user runs them, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import embedded_env

from harness.embedded import MARKER, EmbeddedServer, live_server_processes

pytestmark = pytest.mark.slow
HARNESS = str(Path(sys.executable).with_name("harness"))


@pytest.fixture
def data_dir(pg_data_dir: Path) -> Iterator[Path]:
    path = pg_data_dir.resolve()
    yield path
    if EmbeddedServer(path).is_harness_cluster():
        EmbeddedServer(path).stop(force=True)


def harness_db(data_dir: Path, *args: str, env: dict[str, str] | None = None,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HARNESS, "db", *args], env={**embedded_env(data_dir), **(env or {})},
                          capture_output=True, text=True, timeout=120, input=stdin)


def status(data_dir: Path) -> dict[str, object]:
    done = harness_db(data_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_db_start_status_url_stop_delete(data_dir: Path) -> None:
    # 1. nothing yet: status says so, url fails (exit 2) with a hint
    now = status(data_dir)
    assert (now["running"], now["initialised"], now["harness_cluster"]) == (False, False, False)
    url = harness_db(data_dir, "url")
    assert url.returncode == 2 and "harness db start" in url.stderr

    # 2. start: prints the URL, the server keeps running (pinned) after the command exits
    started = harness_db(data_dir, "start")
    assert started.returncode == 0, started.stderr
    server_url = started.stdout.strip()
    now = status(data_dir)
    assert now["running"] is True and now["harness_cluster"] is True and now["pinned"] is True
    assert now["url"] == server_url
    assert harness_db(data_dir, "url").stdout.strip() == server_url
    with psycopg.connect(server_url) as conn:
        assert conn.execute("SELECT count(*) FROM oauth_auth_codes").fetchone() == (0,)

    # 3. start again: the same server, not a second one
    again = harness_db(data_dir, "start")
    assert again.stdout.strip() == server_url
    assert EmbeddedServer(data_dir).status().pid == now["pid"]

    # 4. stop: no postgres process left
    stopped = harness_db(data_dir, "stop")
    assert (stopped.returncode, stopped.stdout.strip(), stopped.stderr) == (0, "stopped", "")
    assert live_server_processes(data_dir) == []
    assert status(data_dir)["running"] is False

    # 5. delete asks first: without a terminal and without --yes nothing is deleted (exit 2)
    refused = harness_db(data_dir, "delete", stdin="y\n")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (data_dir / "PG_VERSION").exists()
    deleted = harness_db(data_dir, "delete", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert not data_dir.exists()


def test_data_dir_option_overrides_the_environment(data_dir: Path, tmp_path: Path) -> None:
    other = (tmp_path / "elsewhere").resolve()
    done = subprocess.run([HARNESS, "db", "status", "--json", "--data-dir", str(other)],
                          env=embedded_env(data_dir), capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["data_dir"] == str(other)


def test_delete_and_stop_refuse_a_directory_that_is_not_a_harness_cluster(tmp_path: Path) -> None:
    # Issue 8, item 3: `harness db delete --data-dir X` deleted any directory, without asking.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for action in (["delete", "--yes"], ["stop"]):
        done = harness_db(precious, *action, "--data-dir", str(precious))
        assert done.returncode == 2, done
        assert "not a claimcheck cluster" in done.stderr
        assert "Traceback" not in done.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_a_foreign_postgres_cluster_is_never_stopped_or_started(data_dir: Path) -> None:
    # A PostgreSQL data directory the harness did not create (no marker) is left alone.
    started = harness_db(data_dir, "start")
    assert started.returncode == 0, started.stderr
    (data_dir / MARKER).unlink()  # now it looks like somebody else's cluster
    pid = EmbeddedServer(data_dir).status().pid
    try:
        done = harness_db(data_dir, "stop")
        assert done.returncode == 2 and "not a claimcheck cluster" in done.stderr
        assert EmbeddedServer(data_dir).status().pid == pid  # still serving
    finally:
        (data_dir / MARKER).write_text("{}\n")


def test_db_commands_ignore_the_database_url_and_never_print_its_password(data_dir: Path) -> None:
    # Issue 8, item 4: `harness db start` with HARNESS_DATABASE_URL set created tables in that
    # foreign database, printed the URL with its password, and started nothing.
    foreign = "postgresql://alice:S3CRET-PW@127.0.0.1:1/prod"
    done = harness_db(data_dir, "start", env={"HARNESS_DATABASE_URL": foreign})
    assert done.returncode == 0, done.stderr
    assert "S3CRET-PW" not in done.stdout + done.stderr
    assert "embedded cluster" in done.stderr
    assert status(data_dir)["running"] is True  # it started the embedded server


def test_stop_refuses_while_a_run_uses_the_server(data_dir: Path) -> None:
    # Issue 8, item 13: a run's server must not be stopped under it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import harness, sys, time\ndb = harness.connect()\n"
         "print('ready', flush=True)\nsys.stdin.readline()\ndb.close()"],
        env=embedded_env(data_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        done = harness_db(data_dir, "stop")
        assert done.returncode == 2 and "in use by 1 process" in done.stderr
        assert EmbeddedServer(data_dir).status().running
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    # its last user gone (and never pinned), the server stopped with it
    assert not EmbeddedServer(data_dir).status().running


def test_db_status_of_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    done = harness_db(file, "status", "--data-dir", "/dev/null")
    assert done.returncode == 2 and "not a directory" in done.stderr
    assert "Traceback" not in done.stderr
