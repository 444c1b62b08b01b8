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
from harness.scenario import Inconclusive, NotApplicable, Scenario, ScenarioError, Step
from harness.scope import RunScope
from harness.settings import Settings
from harness.targets import load_target
from harness.targets.capabilities import Capability, capabilities_of, describe, missing
from harness.targets.endpoint import is_description

Verdict = Literal["holds", "violated", "inconclusive", "not_applicable", "error"]
#: ``inconclusive``: the check ran but its evidence proves nothing (a race in which nothing could
#: race, e.g. a server that runs one request at a time); never counted as holding.
VERDICTS: tuple[Verdict, ...] = ("holds", "violated", "inconclusive", "not_applicable", "error")
SEVERITIES = ("critical", "high", "medium", "low", "info")
#: The shipped targets, in the order the findings table shows them.
SHIPPED_TARGETS = ("faithful", "hardened", "naive")
#: Theme modules, in catalogue order (each registers its checks on import).
THEMES = ("rfc7636_pkce", "rfc6749_codes", "replay_families", "refresh_rotation", "tokens", "at_rest",
          "repository_methods", "concurrency")


@dataclass(frozen=True)
class CheckSpec:
    """What a check examines: ``source`` is the normative reference (RFC and section)."""

    id: str
    title: str
    source: str
    severity: str
    expected: str
    theme: str
    #: What the target must offer beyond the grants (``harness.targets.capabilities``).
    requires: tuple[str, ...] = ()


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
    found and removed by that prefix and by nothing else. Over HTTP there is
    no database: clients are the description's, codes come from its
    authorization endpoint, and ``caps`` says what else can be looked at.
    """

    db: Database | None
    target_name: str
    pepper: str | bytes | None
    spec: CheckSpec
    scope: RunScope | None
    caps: frozenset[Capability] = frozenset()
    remote_clients: tuple[str, ...] = ()
    scenario: Scenario = field(default_factory=Scenario)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    user: str = ""
    #: What ``cleanup()`` runs before the scope's removal (e.g. rows found by digest).
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user = self.name("user")

    @property
    def remote(self) -> bool:
        """Whether the target is a server reached over HTTP (an endpoint description)."""
        return bool(self.remote_clients)

    def has(self, *caps: Capability) -> bool:
        return all(c in self.caps for c in caps)

    @property
    def rows(self) -> Database:
        """The target's database, for checks that look at its rows (they require ``ROWS``)."""
        if self.db is None:
            raise NotApplicable("needs rows: the target's database is not reachable")
        return self.db

    @property
    def key(self) -> str | bytes:
        """The deployment pepper, for checks that recompute digests (they require ``DIGEST``)."""
        if not self.pepper:
            raise NotApplicable("needs the at-rest pepper")
        return self.pepper

    def name(self, suffix: str) -> str:
        """A name unique to this run of this check (clients, users, codes), under the scope's prefix."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.spec.id.lower()).strip("-")
        label = f"{self.run_id}-{slug}-{suffix}"
        return self.scope.name(label) if self.scope is not None else f"cc-{label}"

    def client(self, label: str = "a") -> str:
        """A client for ``label``: a registered ``oauth_clients`` row unique to this run, or, over
        HTTP, the next client of the description (the first label gets the first client)."""
        if self.remote:
            if label not in self._labels:
                if len(self._labels) >= len(self.remote_clients):
                    raise NotApplicable(f"the check needs {len(self._labels) + 1} clients; the "
                                        f"description has {len(self.remote_clients)}")
                self._labels[label] = self.remote_clients[len(self._labels)]
            return self._labels[label]
        assert self.db is not None
        client_id = self.name(f"client-{label}")
        self.db.ensure_party(client_id, self.user)
        return client_id

    def cleanup(self) -> None:
        """Run the check's own cleanups; the scope's owner removes the rows by prefix."""
        for fn in self.cleanups:
            fn()

    def target(self, *, clock: ManualClock | None = None, pepper: str | bytes | None = None,
               database: Database | None = None, **options: Any) -> Any:
        """A fresh instance of the target under test (its own hooks, a manual clock).

        ``database``: build it on another handle to the same database (``pkce.constant-time``
        hands it one whose connections trace what they load) instead of the check's own.
        """
        return load_target(self.target_name, database if database is not None else self.db,
                           pepper=self.pepper if pepper is None else pepper,
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
    *, id: str, title: str, source: str, severity: str, expected: str,
    requires: Iterable[Capability] = (),
) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check ``id`` (its theme is the module's name).

    ``requires``: the capabilities the check cannot run without; a target that lacks one gets
    ``not_applicable`` naming it, before the check runs.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")

    def register(fn: CheckFn) -> CheckFn:
        if id in _REGISTRY:
            raise ValueError(f"check {id!r} is registered twice")
        spec = CheckSpec(id=id, title=title, source=source, severity=severity, expected=expected,
                         theme=fn.__module__.rsplit(".", 1)[-1],
                         requires=tuple(Capability(c).value for c in requires))
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


def _pepper(pepper: str | bytes | None, target_name: str) -> str | bytes | None:
    value = pepper if pepper else Settings.from_env().pepper
    if not value and not is_description(target_name):
        raise SetupError("no at-rest pepper: set HARNESS_AT_REST_PEPPER (or pass pepper=…/--pepper)")
    return value or None


def probe(target_name: str, db: Database | None,
          pepper: str | bytes | None) -> tuple[frozenset[Capability], tuple[str, ...]]:
    """What the target offers, and (over HTTP) its clients: loads it once, as the checks will."""
    clock = ManualClock()
    target = load_target(target_name, db, pepper=pepper, clock=clock)
    clients: tuple[str, ...] = ()
    description = getattr(target, "description", None)
    if description is not None:
        clients = tuple(c.id for c in description.clients)
    close = getattr(target, "close", None)
    if callable(close):
        close()
    # Handed the same database and clock a check hands it: ROWS and CLOCK mean the target uses them.
    return capabilities_of(target, db=db, clock=clock), clients


def run_check(check_id: str, db: Database | None, target_name: str, pepper: str | bytes | None = None,
              *, scope: RunScope | None = None, keep_rows: bool = False,
              offered: tuple[frozenset[Capability], tuple[str, ...]] | None = None) -> CheckResult:
    """Run one check on a fresh instance of ``target_name``; never raises for a target's failure.

    ``SetupError`` (unknown target, no pepper) does propagate: nothing was judged. A target that
    lacks a capability the check requires gets ``not_applicable`` naming it, and the check does not
    run. The rows the check creates are named under ``scope`` and left for its owner to remove (a
    notebook shows them, then cleans up); without a scope the check uses one of its own and removes
    its rows afterwards, unless ``keep_rows``. ``offered`` is ``probe()``'s answer, when known.
    """
    if check_id not in _REGISTRY:
        raise SetupError(f"unknown check {check_id!r}: known checks are {', '.join(CATALOGUE)}")
    entry = _REGISTRY[check_id]
    pepper = _pepper(pepper, target_name)
    caps, clients = offered or probe(target_name, db, pepper)
    lacking = missing((Capability(c) for c in entry.spec.requires), caps)
    if lacking:
        reason = (f"needs {describe(lacking)}; the target offers "
                  f"{describe(sorted(caps)) or 'only the grants (HTTP)'}")
        return CheckResult(entry.spec, target_name, "not_applicable", [{"reason": reason}], [], 0.0)
    own = scope is None and db is not None
    run = scope or (RunScope(db, f"check {check_id}", remove=not keep_rows) if db is not None else None)
    ctx = Context(db, target_name, pepper, entry.spec, run, caps=caps, remote_clients=clients)
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
    except Inconclusive as exc:
        verdict = "violated" if ctx.scenario.violated else "inconclusive"
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
        if own and run is not None:
            run.cleanup()
    evidence = extra + (ctx.scenario.evidence or [
        {"step": s.action, "expected": s.expected, "observed": s.observed, "ok": s.ok}
        for s in ctx.scenario.steps if s.judged
    ])
    return CheckResult(entry.spec, target_name, verdict, evidence, list(ctx.scenario.steps),
                       time.monotonic() - started)


def scan(db: Database | None, target_name: str, only: Iterable[str] | None = None,
         pepper: str | bytes | None = None,
         progress: Callable[[CheckResult], None] | None = None,
         *, scope: RunScope | None = None, keep_rows: bool = False) -> list[CheckResult]:
    """Run every check (or those ``only`` selects) on ``target_name``, in catalogue order.

    Each check removes its rows when it ends (see ``run_check``), unless ``scope`` is given. An
    endpoint description (``*.toml``) needs no database: ``db`` may be ``None``.
    """
    pepper = _pepper(pepper, target_name)
    if db is None and not is_description(target_name):
        raise SetupError(f"target {target_name!r} runs in process: it needs a database")
    # Resolve the target once up front, so an unknown or broken one is a setup error, not N errors.
    offered = probe(target_name, db, pepper)
    results = []
    for check_id in select(only):
        result = run_check(check_id, db, target_name, pepper, scope=scope, keep_rows=keep_rows,
                           offered=offered)
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
