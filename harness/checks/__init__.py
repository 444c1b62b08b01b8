"""The check catalogue: every property the harness examines, with its source, severity and verdict.

Each check is a short Hermitage-style scenario (``harness.scenario``) run on a
fresh target of its own, with its own client, user and code names, so checks
never interfere and never reset the database. The public face::

    import harness
    from harness.checks import CATALOGUE, run_check, scan, findings_table

    with harness.connect() as db:
        result = run_check("code.client-binding", db, "faithful", pepper="…")
        result.verdict                 # 'violated'
        result.frame()                 # the steps: action, expected, observed, ok
        result.evidence                # evidence rows (digests shortened, no raw secret)
        results = [r for t in ("faithful", "hardened", "naive") for r in scan(db, t, pepper="…")]
        findings_table(results)        # one row per check, one column per target

Verdicts: ``holds``, ``violated``, ``not_applicable`` (the target cannot take
part, e.g. it exposes no step hooks to force an interleaving) and ``error``
(the check could not run; the reason is in the evidence).
"""

from __future__ import annotations

import importlib
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from harness.clock import ManualClock
from harness.database import Database
from harness.errors import SetupError
from harness.repository import OAuthRepository
from harness.scenario import NotApplicable, Scenario, ScenarioError, Step
from harness.scope import RunScope
from harness.settings import Settings
from harness.targets import load_target

Verdict = Literal["holds", "violated", "not_applicable", "error"]
VERDICTS: tuple[Verdict, ...] = ("holds", "violated", "not_applicable", "error")
SEVERITIES = ("critical", "high", "medium", "low", "info")
#: The shipped targets, in the order the findings table shows them.
SHIPPED_TARGETS = ("faithful", "hardened", "naive")
#: Theme modules, in catalogue order (each registers its checks on import).
THEMES = ("rfc7636_pkce", "rfc6749_codes", "replay_families", "refresh_rotation", "at_rest",
          "concurrency")


@dataclass(frozen=True)
class CheckSpec:
    """What a check examines: ``source`` is the normative reference (RFC and section)."""

    id: str
    title: str
    source: str
    severity: str
    expected: str
    theme: str


@dataclass(frozen=True)
class CheckResult:
    """A verdict on one target, with the evidence rows and the scenario's steps."""

    spec: CheckSpec
    target: str
    verdict: Verdict
    evidence: list[dict[str, Any]]
    steps: list[Step]
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return self.spec.id

    def frame(self) -> pd.DataFrame:
        """The steps as a table: action, expected, observed, ok (``None`` = not judged)."""
        return pd.DataFrame([{"action": s.action, "expected": s.expected, "observed": s.observed,
                              "ok": s.ok if s.judged else None} for s in self.steps])

    def as_dict(self, *, steps: bool = True) -> dict[str, Any]:
        """The JSON shape of DESIGN.md (``id``, ``title``, ``source``, ``severity``, ``expected``,
        ``verdict``, ``evidence``) plus ``theme``, ``seconds`` and, with ``steps``, the steps."""
        out: dict[str, Any] = {
            "id": self.spec.id, "title": self.spec.title, "source": self.spec.source,
            "severity": self.spec.severity, "expected": self.spec.expected,
            "verdict": self.verdict, "evidence": self.evidence, "theme": self.spec.theme,
            "seconds": round(self.seconds, 3),
        }
        if steps:
            out["steps"] = [s.as_dict() for s in self.steps]
        return out


@dataclass
class Context:
    """What a check function gets: the database, a factory for fresh targets, and unique names.

    Every name it hands out starts with its run scope's prefix
    (``cc-<run id>-…``, ``harness.scope``), so the rows a check creates are
    found and removed by that prefix and by nothing else.
    """

    db: Database
    target_name: str
    pepper: str | bytes
    spec: CheckSpec
    scope: RunScope
    scenario: Scenario = field(default_factory=Scenario)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    user: str = ""
    #: What ``cleanup()`` runs before the scope's removal (e.g. rows found by digest).
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.user = self.name("user")

    def name(self, suffix: str) -> str:
        """A name unique to this run of this check (clients, users, codes), under the scope's prefix."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.spec.id.lower()).strip("-")
        return self.scope.name(f"{self.run_id}-{slug}-{suffix}")

    def client(self, label: str = "a") -> str:
        """A registered client (``oauth_clients`` row) unique to this run."""
        client_id = self.name(f"client-{label}")
        self.db.ensure_party(client_id, self.user)
        return client_id

    def cleanup(self) -> None:
        """Run the check's own cleanups; the scope's owner removes the rows by prefix."""
        for fn in self.cleanups:
            fn()

    def target(self, *, clock: ManualClock | None = None, pepper: str | bytes | None = None,
               **options: Any) -> OAuthRepository:
        """A fresh instance of the target under test (its own hooks, a manual clock)."""
        return load_target(self.target_name, self.db, pepper=self.pepper if pepper is None else pepper,
                           clock=clock or ManualClock(), **options)

    # shorthands for the scenario
    @property
    def sc(self) -> Scenario:
        return self.scenario


CheckFn = Callable[[Context], None]


@dataclass(frozen=True)
class _Entry:
    spec: CheckSpec
    fn: CheckFn


_REGISTRY: dict[str, _Entry] = {}
#: Every check, by id, in catalogue order.
CATALOGUE: dict[str, CheckSpec] = {}


def check(
    *, id: str, title: str, source: str, severity: str, expected: str
) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check ``id`` (its theme is the module's name)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")

    def register(fn: CheckFn) -> CheckFn:
        if id in _REGISTRY:
            raise ValueError(f"check {id!r} is registered twice")
        spec = CheckSpec(id=id, title=title, source=source, severity=severity, expected=expected,
                         theme=fn.__module__.rsplit(".", 1)[-1])
        _REGISTRY[id] = _Entry(spec, fn)
        CATALOGUE[id] = spec
        return fn

    return register


def _load_themes() -> None:
    for theme in THEMES:
        importlib.import_module(f"harness.checks.{theme}")


def catalogue_frame() -> pd.DataFrame:
    """The catalogue as a table: id, theme, title, source, severity, expected."""
    return pd.DataFrame([{"id": s.id, "theme": s.theme, "title": s.title, "source": s.source,
                          "severity": s.severity, "expected": s.expected} for s in CATALOGUE.values()])


def select(only: Iterable[str] | None = None) -> list[str]:
    """Check ids matching ``only`` (exact ids, or a prefix such as ``pkce`` or ``replay.``)."""
    if not only:
        return list(CATALOGUE)
    chosen: list[str] = []
    for pattern in only:
        exact = [pattern] if pattern in CATALOGUE else []
        prefix = pattern.rstrip(".") + "."
        matches = exact or [i for i in CATALOGUE if i.startswith(prefix)]
        if not matches:
            raise SetupError(f"unknown check {pattern!r}: known checks are {', '.join(CATALOGUE)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _pepper(pepper: str | bytes | None) -> str | bytes:
    value = pepper if pepper else Settings.from_env().pepper
    if not value:
        raise SetupError("no at-rest pepper: set HARNESS_AT_REST_PEPPER (or pass pepper=…/--pepper)")
    return value


def run_check(check_id: str, db: Database, target_name: str, pepper: str | bytes | None = None,
              *, scope: RunScope | None = None, keep_rows: bool = False) -> CheckResult:
    """Run one check on a fresh instance of ``target_name``; never raises for a target's failure.

    ``SetupError`` (unknown target, no pepper) does propagate: nothing was judged. The rows the
    check creates are named under ``scope`` and left for its owner to remove (a notebook shows
    them, then cleans up); without a scope the check uses one of its own and removes its rows
    afterwards, unless ``keep_rows``.
    """
    if check_id not in _REGISTRY:
        raise SetupError(f"unknown check {check_id!r}: known checks are {', '.join(CATALOGUE)}")
    entry = _REGISTRY[check_id]
    own = scope is None
    run = scope or RunScope(db, f"check {check_id}", remove=not keep_rows)
    ctx = Context(db, target_name, _pepper(pepper), entry.spec, run)
    started = time.monotonic()
    verdict: Verdict
    extra: list[dict[str, Any]] = []
    try:
        entry.fn(ctx)
    except SetupError:
        raise
    except NotApplicable as exc:
        verdict = "not_applicable"
        extra = [{"reason": str(exc)}]
    except ScenarioError as exc:
        verdict = "error"
        extra = [{"reason": str(exc)}]
    except Exception as exc:  # a target may raise anything; the verdict says so, the scan goes on
        verdict = "error"
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        extra = [{"reason": f"{type(exc).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}",
                  "message": str(exc).splitlines()[0][:200] if str(exc) else ""}]
    else:
        verdict = "violated" if ctx.scenario.violated else "holds"
    finally:
        if own and not keep_rows:
            ctx.cleanup()
        if own:
            run.cleanup()
    evidence = extra + (ctx.scenario.evidence or [
        {"step": s.action, "expected": s.expected, "observed": s.observed, "ok": s.ok}
        for s in ctx.scenario.steps if s.judged
    ])
    return CheckResult(entry.spec, target_name, verdict, evidence, list(ctx.scenario.steps),
                       time.monotonic() - started)


def scan(db: Database, target_name: str, only: Iterable[str] | None = None,
         pepper: str | bytes | None = None,
         progress: Callable[[CheckResult], None] | None = None,
         *, scope: RunScope | None = None, keep_rows: bool = False) -> list[CheckResult]:
    """Run every check (or those ``only`` selects) on ``target_name``, in catalogue order.

    Each check removes its rows when it ends (see ``run_check``), unless ``scope`` is given.
    """
    pepper = _pepper(pepper)
    # Resolve the target once up front, so an unknown or broken one is a setup error, not N errors.
    load_target(target_name, db, pepper=pepper, clock=ManualClock())
    results = []
    for check_id in select(only):
        result = run_check(check_id, db, target_name, pepper, scope=scope, keep_rows=keep_rows)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def findings_table(results: Sequence[CheckResult], *, details: bool = True) -> pd.DataFrame:
    """Check × target: one row per check, one column of verdicts per target (scan order)."""
    targets: list[str] = []
    for r in results:
        if r.target not in targets:
            targets.append(r.target)
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r.id, {"id": r.id, "title": r.spec.title, "source": r.spec.source,
                                     "severity": r.spec.severity})
        row[r.target] = r.verdict
    frame = pd.DataFrame(list(rows.values()))
    cols = (["id", "title", "source", "severity"] if details else ["id"]) + targets
    return frame.reindex(columns=cols) if not frame.empty else pd.DataFrame(columns=cols)


__all__ = [
    "CATALOGUE",
    "SHIPPED_TARGETS",
    "VERDICTS",
    "CheckResult",
    "CheckSpec",
    "Context",
    "Verdict",
    "catalogue_frame",
    "check",
    "findings_table",
    "run_check",
    "scan",
    "select",
]

_load_themes()
