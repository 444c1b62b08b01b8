"""Hermitage-style scenarios: short named steps, each stating what it expects and what it observed.

A check builds a :class:`Scenario`, records its steps, and the runner turns
the steps into a verdict: a judged step that was not as expected means the
property is violated; a setup step that fails means the check could not run.

Example::

    from harness.scenario import Scenario
    sc = Scenario()
    sc.setup("store a code for client-a", lambda: target.store_authorization_code(params))
    out = sc.attempt("exchange it", "ok", lambda: target.exchange_code(code, "client-a", uri))
    sc.attempt("exchange it again", "refused", lambda: target.exchange_code(code, "client-a", uri))
    sc.observe("family rows after the replay", expected="0", observed=str(n), ok=n == 0)
    sc.steps[-1]                      # Step(action=…, expected='0', observed='0', ok=True, rows=None)

Interleavings are forced, never left to luck: :func:`force_interleaving`
pauses one request at a named step hook of the target (``after_claim``,
``before_link``, …) and runs a second request to completion (or until it
blocks on a row lock) before letting the first one go on, and returns the
timeline that shows the order really happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from harness.database import Database
from harness.errors import OAuthError

Expect = Literal["ok", "refused"]


@dataclass(frozen=True)
class Step:
    """One line of a scenario: the action, what the spec expects, what happened, and whether that matched.

    ``judged=False`` marks a step that only reports (setup, or an observation
    that has no right answer); it never makes a check violated.
    """

    action: str
    expected: str
    observed: str
    ok: bool
    rows: pd.DataFrame | None = field(default=None, compare=False)
    judged: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``rows`` become a list of records."""
        out: dict[str, Any] = {"action": self.action, "expected": self.expected,
                               "observed": self.observed, "ok": self.ok, "judged": self.judged}
        if self.rows is not None:
            out["rows"] = _records(self.rows)
        return out


@dataclass(frozen=True)
class Outcome:
    """What a call did: ``ok`` with its value, or refused with the error (public message, kind, detail)."""

    ok: bool
    value: Any = None
    error: BaseException | None = None

    @property
    def kind(self) -> str:
        if self.ok:
            return "ok"
        return self.error.kind if isinstance(self.error, OAuthError) else type(self.error).__name__

    @property
    def message(self) -> str:
        return "" if self.error is None else str(self.error)

    def describe(self) -> str:
        """``ok`` or ``refused: <kind> "<public message>" (<internal detail>)``; never a secret."""
        if self.ok:
            return "ok"
        err = self.error
        if isinstance(err, OAuthError):
            detail = f" ({err.detail})" if err.detail != err.message else ""
            return f'refused: {err.kind} "{err.message}"{detail}'
        return f"error: {type(err).__name__}"


class ScenarioError(Exception):
    """A setup step failed: the check cannot be judged (verdict ``error``)."""


class NotApplicable(Exception):
    """The target cannot take part in this check (verdict ``not_applicable``)."""


class Inconclusive(Exception):
    """The check ran, but what it saw proves nothing either way (verdict ``inconclusive``).

    A violation already observed stands: steps judged before it still count.
    """


def call(fn: Callable[[], Any]) -> Outcome:
    """Run ``fn``; an ``OAuthError`` is an outcome (a refusal), anything else propagates."""
    try:
        return Outcome(True, fn())
    except OAuthError as exc:
        return Outcome(False, error=exc)


@dataclass
class Scenario:
    """An ordered list of steps plus the evidence rows a check wants to show."""

    steps: list[Step] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def setup(self, action: str, fn: Callable[[], Any]) -> Any:
        """A step that must succeed for the check to mean anything; its failure is an ``error`` verdict."""
        try:
            value = fn()
        except OAuthError as exc:
            observed = Outcome(False, error=exc).describe()
            self.add(Step(action, "ok", observed, False, judged=False))
            raise ScenarioError(f"setup step failed: {action}: {observed}") from exc
        self.add(Step(action, "ok", "ok", True, judged=False))
        return value

    def attempt(self, action: str, expected: Expect, fn: Callable[[], Any], *,
                judged: bool = True, why: str = "") -> Outcome:
        """Run ``fn`` and record whether it was accepted or refused as ``expected``."""
        out = call(fn)
        ok = out.ok if expected == "ok" else not out.ok
        text = expected if not why else f"{expected} ({why})"
        self.add(Step(action, text, out.describe(), ok, judged=judged))
        return out

    def observe(self, action: str, *, expected: str, observed: Any, ok: bool,
                rows: pd.DataFrame | None = None, judged: bool = True) -> Step:
        """Record a fact read from the database, the logs or a timeline."""
        return self.add(Step(action, expected, str(observed), ok, rows, judged))

    def note(self, action: str, observed: Any, rows: pd.DataFrame | None = None) -> Step:
        """An unjudged observation (what happened, with no right answer)."""
        return self.add(Step(action, "—", str(observed), True, rows, judged=False))

    @property
    def violated(self) -> bool:
        return any(s.judged and not s.ok for s in self.steps)

    def judged_steps(self) -> list[dict[str, Any]]:
        """The judged steps as evidence rows (step, observed, ok)."""
        return [{"step": s.action, "observed": s.observed, "ok": s.ok} for s in self.steps if s.judged]

    def frame(self) -> pd.DataFrame:
        """The steps as a table (action, expected, observed, ok)."""
        return pd.DataFrame([{"action": s.action, "expected": s.expected, "observed": s.observed,
                              "ok": s.ok if s.judged else None} for s in self.steps])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rec in frame.to_dict(orient="records"):
        out.append({str(k): (v if isinstance(v, str | int | float | bool) or v is None else str(v))
                    for k, v in rec.items()})
    return out


# -- forced interleavings -----------------------------------------------------


@dataclass
class Interleaving:
    """What :func:`force_interleaving` saw: both outcomes and the timeline, in order."""

    paused_at: str | None
    first: Outcome | None
    second: Outcome | None
    second_blocked: bool
    events: list[tuple[float, str]]

    @property
    def happened(self) -> bool:
        """The first request really paused and the second really ran while it was paused."""
        labels = [e for _, e in self.events]
        return (self.paused_at is not None and "second started" in labels
                and labels.index("second started") < labels.index("first resumed"))

    def timeline(self) -> pd.DataFrame:
        return pd.DataFrame([{"t_ms": round(t, 2), "event": e} for t, e in self.events])

    def rows(self) -> list[dict[str, Any]]:
        return [{"t_ms": round(t, 2), "event": e} for t, e in self.events]


def _lock_waiters(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def force_interleaving(
    first_target: Any,
    first: Callable[[], Any],
    pause_at: Iterable[str],
    second: Callable[[], Any],
    *,
    db: Database,
    block_timeout_s: float = 3.0,
) -> Interleaving:
    """Run ``first``; when it reaches a step hook named in ``pause_at``, run ``second`` meanwhile.

    ``second`` runs in its own thread (its own connection, like a second token
    endpoint worker) while ``first`` waits inside the hook. If ``second``
    blocks (``pg_stat_activity`` shows a backend waiting on a lock, e.g. the
    row ``first`` holds in an open transaction) the block is recorded and
    ``first`` is let go, so a target that serialises the two never deadlocks.
    ``second`` must not be run on ``first_target`` (its hooks would fire).
    """
    names = set(pause_at)
    t0 = time.monotonic()
    events: list[tuple[float, str]] = []
    lock = threading.Lock()
    state: dict[str, Any] = {"paused_at": None, "second": None, "blocked": False}

    def log(label: str) -> None:
        with lock:
            events.append(((time.monotonic() - t0) * 1000, label))

    def run_second() -> None:
        log("second started")
        state["second"] = call(second)
        log(f"second finished: {state['second'].describe()}")

    worker = threading.Thread(target=run_second, name="interleaved-second", daemon=True)

    def hook(step: str) -> None:
        if step not in names or state["paused_at"] is not None:
            return
        state["paused_at"] = step
        log(f"first paused at {step}")
        worker.start()
        deadline = time.monotonic() + block_timeout_s
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(0.02)
            if worker.is_alive() and _lock_waiters(db) > 0:
                state["blocked"] = True
                log("second blocked on a row lock held by first (pg_stat_activity)")
                break
        if worker.is_alive() and not state["blocked"]:
            log(f"second still running after {block_timeout_s:.1f} s")
        log("first resumed")

    hooks: list[Callable[[str], None]] = first_target.hooks
    hooks.append(hook)
    try:
        log("first started")
        first_out = call(first)
        log(f"first finished: {first_out.describe()}")
    finally:
        hooks.remove(hook)
    if state["paused_at"] is not None:
        worker.join(30)
    else:
        log("first never reached " + " / ".join(sorted(names)) + ": the interleaving did not happen")
    return Interleaving(state["paused_at"], first_out, state["second"], bool(state["blocked"]),
                        sorted(events))
