"""psycopg under gevent: one libev watcher per wait instead of gevent's ``poll`` emulation.

Once gevent has patched ``select``, psycopg waits on each socket through gevent's ``poll``
object (``psycopg.waiting.wait_poll``), which builds a poll object, a result object and a watcher
for every round trip: 67 µs of CPU per ``SELECT 1`` in one greenlet, 36 µs each with 8 greenlets,
measured here. Waiting on one ``io`` watcher of the hub costs 55 and 23 µs. ``install()`` puts
that wait in psycopg's place in a process that runs many connections in greenlets (racer
processes, the green bench, Locust workers). It changes nothing about what is sent or received.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any


def wait_gevent(gen: Generator[Any, Any, Any], fileno: int, interval: float | None = 0.0,
                timeout: float | None = None) -> Any:
    """psycopg's ``wait()`` protocol on a hub ``io`` watcher.

    Readiness is reported as the whole mask that was waited for: libpq is non-blocking, so a
    generator told "readable" when only writable (or the reverse) reads or flushes nothing and
    asks again. ``timeout`` raises psycopg's ``_WaitTimeout`` as its own wait functions do;
    ``interval`` (psycopg's periodic wake-up, for signals in the main thread) is not needed:
    the hub delivers signals itself.
    """
    import gevent
    from gevent.hub import get_hub
    from psycopg import errors

    hub = get_hub()
    try:
        wanted = next(gen)
        while True:
            # psycopg's Wait.R / W / RW are 1 / 2 / 3: libev's read and write masks.
            events = int(wanted)
            watcher = hub.loop.io(fileno, events)
            try:
                if timeout is None:
                    hub.wait(watcher)
                else:
                    with gevent.Timeout(timeout, errors._WaitTimeout("wait timeout expired")):
                        hub.wait(watcher)
            finally:
                watcher.close()
            wanted = gen.send(events)  # Ready.R / W / RW have the same values as the masks
    except StopIteration as stop:
        return stop.value


def install() -> bool:
    """Use ``wait_gevent`` for psycopg's blocking connections, if gevent has patched ``select``.

    Returns whether it is installed. Without gevent's patches it does nothing: psycopg's own C
    wait is then the right one.
    """
    # Not imported means not patched: a thread racer need not pay for importing gevent.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return False
    import psycopg.waiting

    psycopg.waiting.wait = wait_gevent
    return True
