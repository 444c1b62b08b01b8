"""The nemesis: faults injected during a race (terminated backends, a restarted or paused server).

As in Jepsen, the nemesis is one more process of the history: each fault is
an ``invoke`` / ``info`` pair by process ``"nemesis"`` (``f`` = the fault),
so a timeline shows when it struck. Racers keep going through the faults
(their pools reconnect); an attempt whose connection was lost is recorded as
``info`` (indeterminate) and the single-winner invariant is judged over the
``ok`` attempts (DESIGN.md "Bad input and faults").
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from harness.database import CONNECT_TIMEOUT_S, Database
from harness.errors import SetupError
from harness.history import History, Op

log = logging.getLogger(__name__)

FAULTS = ("none", "terminate", "restart", "pause")
#: A paused server is always resumed after this long, whatever happens to the run.
PAUSE_S = 0.4
_PROCESS = "nemesis"


@dataclass
class Nemesis:
    """Injects ``fault`` every ``interval_s`` seconds from ``start`` until ``stop``.

    ``terminate``: ``pg_terminate_backend`` on every connection whose
    ``application_name`` is ``app_name`` (the racers'), any server.
    ``restart``: ``pg_ctl restart -m fast`` (embedded server only).
    ``pause``: SIGSTOP the postmaster and its children for ``pause_s``, then
    SIGCONT (embedded server only; the resume runs in a ``finally``).
    """

    db: Database
    fault: str
    app_name: str
    interval_s: float = 0.5
    pause_s: float = PAUSE_S
    first_after_s: float = 0.2
    events: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _history: History | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.fault not in FAULTS or self.fault == "none":
            raise SetupError(f"unknown nemesis {self.fault!r}: use one of {', '.join(FAULTS)}")
        if self.fault in ("restart", "pause") and self.db.embedded is None:
            raise SetupError(
                f"--nemesis {self.fault} needs the embedded server (it signals or restarts "
                "the server process); against a server given by URL use --nemesis terminate"
            )

    def start(self, history: History) -> None:
        self._history = history
        self._thread = threading.Thread(target=self._loop, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop injecting, wait for the last fault to heal, and summarise what was done."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)
        self._heal_pools()
        errors = [e["error"] for e in self.events if e.get("error")]
        return {
            "fault": self.fault,
            "injected": sum(1 for e in self.events if not e.get("error")),
            "failed": len(errors),
            "terminated_backends": sum(e.get("backends", 0) for e in self.events),
            "errors": errors[:5],
        }

    # -- the loop ---------------------------------------------------------------

    def _loop(self) -> None:
        if self._stop.wait(self.first_after_s):
            return
        while not self._stop.is_set():
            self._inject()
            if self._stop.wait(self.interval_s):
                return

    def _inject(self) -> None:
        value: dict[str, Any] = {"fault": self.fault}
        self._record("invoke", value)
        event: dict[str, Any] = {"fault": self.fault, "at_ns": time.monotonic_ns()}
        try:
            if self.fault == "terminate":
                event["backends"] = self._terminate()
            elif self.fault == "restart":
                self._restart()
            else:
                self._pause()
        except Exception as exc:  # a fault that could not be injected is reported, never raised
            event["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("nemesis %s failed: %s", self.fault, exc)
        self.events.append(event)
        done = dict(value, **{k: v for k, v in event.items() if k in ("backends",)})
        self._record("info", done, event.get("error"))

    def _record(self, type_: Any, value: dict[str, Any], error: str | None = None) -> None:
        if self._history is not None:
            self._history.append(Op(_PROCESS, type_, self.fault, value, time.monotonic_ns(), error))

    # -- the faults -------------------------------------------------------------

    def _terminate(self) -> int:
        with psycopg.connect(self.db.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (self.app_name,),
            ).fetchone()
        return int(row[0]) if row else 0

    def _server_processes(self) -> list[psutil.Process]:
        assert self.db.embedded is not None
        pid = self.db.embedded.status().pid
        if pid is None:
            raise RuntimeError("the embedded server is not running")
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def _pause(self) -> None:
        stopped: list[psutil.Process] = []
        try:
            for proc in self._server_processes():
                try:
                    proc.suspend()
                    stopped.append(proc)
                except psutil.NoSuchProcess:
                    continue
            time.sleep(self.pause_s)
        finally:
            # Never leave a server stopped, whatever went wrong above.
            for proc in stopped:
                try:
                    proc.resume()
                except psutil.NoSuchProcess:
                    continue

    def _restart(self) -> None:
        server = self.db.embedded
        assert server is not None
        # pg_ctl restart reuses postmaster.opts, so the socket directory (and the URL) stay the same.
        server.restart()

    def _heal_pools(self) -> None:
        """After a restart or terminations the caller's pooled connections may be dead: replace them."""
        pool_log = logging.getLogger("psycopg.pool")
        level = pool_log.level
        pool_log.setLevel(logging.CRITICAL)  # "discarding broken connection" is the point here
        try:
            for pool in (self.db._read_pool, self.db._write_pool):
                if pool is not None:
                    try:
                        pool.check()
                    except Exception as exc:  # best effort; the next use reconnects anyway
                        log.warning("pool check after the nemesis failed: %s", exc)
        finally:
            pool_log.setLevel(level)


#: How often each fault strikes by default: a restart needs ~1 s to come back.
DEFAULT_INTERVAL_S = {"terminate": 0.3, "restart": 2.0, "pause": 1.0}


def make_nemesis(db: Database, fault: str, app_name: str, **options: Any) -> Nemesis | None:
    """``None`` for ``"none"``; otherwise a ``Nemesis`` (a clear ``SetupError`` if it cannot run here)."""
    if fault == "none":
        return None
    options.setdefault("interval_s", DEFAULT_INTERVAL_S.get(fault, 0.5))
    return Nemesis(db, fault, app_name, **options)
