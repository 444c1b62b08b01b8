"""CPU seconds spent by this process, its children, and a PostgreSQL server on this machine.

On a small machine the client and the server share the cores, so a benchmark's rate is set by
the CPU each side spends per operation: these readings let ``harness bench`` and ``harness race``
say where the time goes instead of guessing.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import psycopg

from harness.database import Database


def process_cpu_s() -> float:
    """CPU seconds (user + system) this process has used: a bench client's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (pgbench, the green processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime + stime (proc(5): fields 14 and 15)


def _stat(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()  # past "(comm)", which may hold spaces


def server_cpu_s(postmaster: int | None, *, settle_s: float = 1.0) -> float | None:
    """CPU seconds the PostgreSQL server on this machine has used: postmaster, backends, reaped backends.

    The backends of a segment exit when its connections close; once the postmaster reaps them,
    the kernel adds their CPU to its ``cutime``/``cstime``, so the difference between two
    readings is what the server spent in between. A backend that has exited but is not reaped
    yet (a zombie) shows no CPU at all, so the reading waits up to ``settle_s`` for none to be
    left, and is taken again if a backend was reaped while the children were being read.
    ``None`` when the server is elsewhere or ``/proc`` unreadable.
    """
    if postmaster is None:
        return None
    deadline = time.monotonic() + settle_s
    try:
        while True:
            before = _stat(postmaster)
            children, zombies = 0, 0
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        fields = _stat(entry.name)
                    except OSError:
                        continue  # gone: counted in the postmaster's cutime (checked below)
                    if fields[1] == str(postmaster):
                        children += _ticks(fields)
                        zombies += fields[0] == "Z"
            own = _stat(postmaster)
            stable = own[13:15] == before[13:15]
            if stable and (not zombies or time.monotonic() >= deadline):
                break
            time.sleep(0.01)
    except (OSError, IndexError, ValueError):
        return None
    return (_ticks(own) + int(own[13]) + int(own[14]) + children) / os.sysconf("SC_CLK_TCK")


def find_postmaster(db: Database) -> int | None:
    """The server's postmaster pid, when it runs on this machine and ``/proc`` shows it."""
    try:
        with db.connect() as conn:  # read while the backend lives: once closed, it is reaped
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            parent = int(_stat(int(row[0]) if row else 0)[1])
        if b"postgres" not in Path(f"/proc/{parent}/cmdline").read_bytes():
            return None
    except (OSError, psycopg.Error, IndexError, ValueError):
        return None
    return parent
