"""``harness.green``: psycopg's waits on gevent's hub, in a process that gevent has patched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from harness import green
from harness.database import Database

#: Run in a child: gevent's patches must never reach the test process itself.
_CHILD = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time, gevent, psycopg, psycopg.waiting
    from harness import green
    assert green.install() and psycopg.waiting.wait is green.wait_gevent
    url = sys.argv[1]
    conns = [psycopg.connect(url, autocommit=True) for _ in range(4)]
    started = time.monotonic()
    # Four sleeps of 0.5 s in four greenlets take about 0.5 s, not 2: the waits yield to the hub.
    results = gevent.joinall([gevent.spawn(lambda c=c, i=i: c.execute(
        "SELECT pg_sleep(0.5), %s::int", (i,)).fetchone()[1]) for i, c in enumerate(conns)])
    assert sorted(g.value for g in results) == [0, 1, 2, 3], [g.exception for g in results]
    assert time.monotonic() - started < 1.5
    # A backend killed under a waiting greenlet: the statement fails, nothing hangs.
    victim = conns[0].info.backend_pid
    def slow():
        try:
            conns[0].execute("SELECT pg_sleep(30)")
        except psycopg.OperationalError:
            return "failed"
        return "returned"
    waiting = gevent.spawn(slow)
    gevent.sleep(0.3)
    conns[1].execute("SELECT pg_terminate_backend(%s)", (victim,))
    assert waiting.get(timeout=10) == "failed"
    print("ok")
""")


def test_greenlets_wait_on_the_hub_and_a_killed_backend_fails_its_statement(
        database: Database) -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD, database.url], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_without_gevents_patches_nothing_is_installed() -> None:
    import psycopg.waiting

    before = psycopg.waiting.wait
    assert green.install() is False
    assert psycopg.waiting.wait is before
