"""``harness.cpu``: the readings ``bench`` and ``race`` use to say where the time goes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.cpu import find_postmaster, process_cpu_s, server_cpu_s
from harness.database import Database


def test_work_in_this_process_shows_in_its_cpu() -> None:
    before = process_cpu_s()
    digest = b""
    for _ in range(200_000):
        digest = hashlib.sha256(digest).digest()
    assert process_cpu_s() > before


def test_work_of_the_local_server_shows_in_its_cpu_also_after_its_backend_exits(
        database: Database) -> None:
    postmaster = find_postmaster(database)
    assert postmaster is not None  # the embedded server runs on this machine
    assert b"postgres" in Path(f"/proc/{postmaster}/cmdline").read_bytes()
    before = server_cpu_s(postmaster)
    assert before is not None
    with database.connect() as conn:  # a backend of its own, which exits at the end of the block
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    after = server_cpu_s(postmaster)
    assert after is not None and after - before > 0.05  # the exited backend's CPU still counts


def test_no_server_no_reading() -> None:
    assert server_cpu_s(None) is None
    assert server_cpu_s(2**22 + 12345) is None  # no such process
