"""``harness db start|status|url|stop|delete`` as a user runs them, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import embedded_env

from harness.embedded import EmbeddedServer, live_server_processes

pytestmark = pytest.mark.slow
HARNESS = str(Path(sys.executable).with_name("harness"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = (tmp_path / "pgdata").resolve()
    yield path
    EmbeddedServer(path).stop()


def harness_db(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HARNESS, "db", *args], env=embedded_env(data_dir),
                          capture_output=True, text=True, timeout=120)


def status(data_dir: Path) -> dict[str, object]:
    done = harness_db(data_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_db_start_status_url_stop_delete(data_dir: Path) -> None:
    # 1. nothing yet: status says so, url fails with a hint
    assert status(data_dir) == {
        "data_dir": str(data_dir), "initialised": False, "running": False, "pid": None, "url": None}
    url = harness_db(data_dir, "url")
    assert url.returncode == 1 and "harness db start" in url.stdout

    # 2. start: prints the URL, the server keeps running after the command exits
    started = harness_db(data_dir, "start")
    assert started.returncode == 0, started.stderr
    assert started.stderr == ""  # no stray warnings on a user's terminal
    server_url = started.stdout.strip()
    now = status(data_dir)
    assert now["running"] is True and now["initialised"] is True and now["url"] == server_url
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

    # 5. the data stays until delete
    assert (data_dir / "PG_VERSION").exists()
    deleted = harness_db(data_dir, "delete")
    assert deleted.returncode == 0 and not data_dir.exists()


def test_data_dir_option_overrides_the_environment(data_dir: Path, tmp_path: Path) -> None:
    other = (tmp_path / "elsewhere").resolve()
    done = subprocess.run([HARNESS, "db", "status", "--json", "--data-dir", str(other)],
                          env=embedded_env(data_dir), capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["data_dir"] == str(other)
