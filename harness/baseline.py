"""Scan baselines: accept the findings a target is known to have, and fail only on new ones.

A target with known gaps (``faithful`` violates twelve checks by design) fails every scan, so a
*new* bug in a check that is already violated goes unseen: the verdict stays ``violated``. A
baseline records, per target and check, the verdict and the judged steps that failed; comparing
a scan with it names what is new down to the step::

    harness scan --target faithful --write-baseline claimcheck-baseline.json   # accept today's findings
    harness scan --target faithful --baseline claimcheck-baseline.json         # exit 1 only on news

From Python (``compare`` is pure: results in, a ``Comparison`` out)::

    from harness.baseline import Baseline, compare
    base = Baseline.from_results(old_results)
    comparison = compare(base, new_results)
    comparison.exit_status, [c.line() for c in comparison.new]

What a comparison reports (``Change.kind``):

* ``new_violation``: a check violated now that was not violated in the baseline (or is not in it);
* ``new_failing_step``: a judged step that fails now inside a check that was *already* violated
  (the masking this module exists for);
* ``new_error``: a check that could not run now (verdict ``error``) and could in the baseline;
* ``fixed`` / ``fixed_step``: an accepted finding that disappeared (the check holds now, or one
  of its failing steps passes): good news, listed, never a failure;
* ``unjudged``: an accepted finding whose check is now ``inconclusive`` or ``not_applicable``
  (not a failure: nothing was judged, but the finding is no longer *seen* either);
* ``changed``: an accepted failing step whose observation differs (e.g. 2 leaking log lines
  where the baseline saw 1): listed, not a failure, since observations may carry counts;
* ``accepted``: a violated check whose failing steps are all in the baseline.

Exit status (``Comparison.exit_status``): 1 on any ``new_*`` change, else 0, even though checks
are violated. Checks the baseline has but the scan did not run (``--only``, another target) are
not compared.

Step identity
-------------
A step is identified by its check id plus its *action* text, normalised so that it is the same
in every run (``step_identity``):

* names the harness gives rows carry run ids (``cc-1a2b3c4d-5e6f7a-pkce-plain-client-a``): the
  hex run-id parts are replaced (``cc-*-pkce-plain-client-a``), the stable label is kept;
* digests and tokens, new in every run, become ``<digest>`` (64 hex) or ``<value>…`` (shortened,
  ``982e449c…``); these two rules and the one above apply to ``expected`` and ``observed`` too;
* an action of the form ``<measured context>; <judged question>`` carries a measurement in its
  first clause (``lines written: 43 log records, 0 stdout/stderr lines; lines carrying a raw
  secret``, ``columns scanned in 7 tables; …``: counts that differ between targets and
  databases): its numbers become ``N``;
* the same text judged twice in one check gets `` [2]``, `` [3]``… in order of occurrence.

The file format
---------------
JSON, two-space indented, keys sorted, lists sorted, no timestamps: a baseline rewritten from an
unchanged scan is byte-identical (save an ``observed`` that is itself a race's outcome, such as
how many codes ``naive`` let win twice), so it diffs well in git. ``harness scan
--write-baseline`` refuses a scan in which a check could not run: accepting an ``error`` would
hide whatever that check finds once it runs again::

    {
      "catalogue": ["at-rest.digest", "at-rest.no-raw-secrets", …],   # ids when it was written
      "format": "claimcheck-baseline/1",
      "harness_version": "0.1.0",
      "targets": {
        "faithful": {                                   # the target as given to --target
          "code.expiry": {"verdict": "holds"},
          "pkce.plain": {
            "verdict": "violated",
            "failing_steps": [                          # judged steps that failed (sorted by step)
              {"step": "store a code with code_challenge_method=plain",
               "expected": "refused", "observed": "ok"}
            ]
          },
          …
        }
      }
    }

Only ``step`` identifies a failing step; ``expected`` and ``observed`` are there for the reader
of the file (what exactly was accepted) and for ``changed``. ``verdict`` is one of ``holds``,
``violated``, ``inconclusive``, ``not_applicable``, ``error``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from harness import __version__
from harness.checks import CATALOGUE, VERDICTS, CheckResult
from harness.errors import SetupError

FORMAT = "claimcheck-baseline/1"

ChangeKind = Literal["new_violation", "new_failing_step", "new_error", "fixed", "fixed_step",
                     "unjudged", "changed", "accepted"]
#: The kinds that fail a comparison (exit 1).
NEW_KINDS: frozenset[str] = frozenset({"new_violation", "new_failing_step", "new_error"})
#: Report order: what fails first, then the good news, then what is merely informative.
KIND_ORDER: tuple[ChangeKind, ...] = ("new_violation", "new_failing_step", "new_error", "fixed",
                                      "fixed_step", "unjudged", "changed", "accepted")

_RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}

# ``cc-<scope run id>-<check run id>-<label>``: every hex part of ≥ 6 digits after ``cc-`` is a run
# id (harness.scope.new_run_id: 8 hex, Context.run_id: 6 hex); the label after them is stable.
_RUN_NAME = re.compile(r"\bcc-(?:[0-9a-f]{6,}-)+")
# Evidence shows digests and tokens shortened (``short()``: ``982e449c…``) or whole (64 hex): both
# are new values in every run, so they cannot be part of what is compared.
_SHORTENED = re.compile(r"[0-9A-Za-z_-]{6,}…")
_DIGEST = re.compile(r"\b[0-9a-f]{32,}\b")
_NUMBER = re.compile(r"\d+")


def normalise(text: str) -> str:
    """``text`` without run ids in harness-made names, shortened or whole digests, extra spaces."""
    text = _DIGEST.sub("<digest>", _SHORTENED.sub("<value>…", _RUN_NAME.sub("cc-*-", text)))
    return " ".join(text.split())


def step_identity(action: str) -> str:
    """The stable identity of a step's action within its check (see the module docstring)."""
    text = normalise(action)
    head, sep, tail = text.partition("; ")
    if sep:
        # The first clause of "<measured context>; <question>" is a measurement, not the question.
        text = _NUMBER.sub("N", head) + sep + tail
    return text


@dataclass(frozen=True)
class FailingStep:
    """A judged step that was not as expected: its identity, and what it expected and observed."""

    step: str
    expected: str = ""
    observed: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"step": self.step, "expected": self.expected, "observed": self.observed}


def failing_steps(result: CheckResult) -> dict[str, FailingStep]:
    """``{identity: step}`` for the judged steps of ``result`` that failed, in scenario order."""
    seen: Counter[str] = Counter()
    out: dict[str, FailingStep] = {}
    for s in result.steps:
        if not s.judged:
            continue
        ident = step_identity(s.action)
        seen[ident] += 1
        if seen[ident] > 1:  # numbered over every judged step, so a passing first one keeps "[2]" stable
            ident = f"{ident} [{seen[ident]}]"
        if not s.ok:
            out[ident] = FailingStep(ident, normalise(s.expected), normalise(s.observed))
    return out


@dataclass(frozen=True)
class Entry:
    """What the baseline holds for one check on one target."""

    verdict: str
    failing: tuple[FailingStep, ...] = ()

    @property
    def steps(self) -> dict[str, FailingStep]:
        return {f.step: f for f in self.failing}


@dataclass(frozen=True)
class Baseline:
    """Accepted verdicts: ``targets[target][check_id]`` → ``Entry``."""

    targets: Mapping[str, Mapping[str, Entry]]
    catalogue: tuple[str, ...] = ()
    harness_version: str = __version__

    @classmethod
    def from_results(cls, results: Sequence[CheckResult],
                     catalogue: Iterable[str] | None = None) -> Baseline:
        """The baseline that accepts exactly what ``results`` show."""
        targets: dict[str, dict[str, Entry]] = {}
        for r in results:
            steps = failing_steps(r)
            targets.setdefault(r.target, {})[r.id] = Entry(
                r.verdict, tuple(sorted(steps.values(), key=lambda f: f.step)))
        ids = tuple(sorted(CATALOGUE if catalogue is None else catalogue))
        return cls(targets, ids)

    def to_dict(self) -> dict[str, Any]:
        targets: dict[str, Any] = {}
        for target, checks in self.targets.items():
            out: dict[str, Any] = {}
            for check_id, entry in checks.items():
                item: dict[str, Any] = {"verdict": entry.verdict}
                if entry.failing:
                    item["failing_steps"] = [f.as_dict()
                                             for f in sorted(entry.failing, key=lambda f: f.step)]
                out[check_id] = item
            targets[target] = out
        return {"format": FORMAT, "harness_version": self.harness_version,
                "catalogue": sorted(self.catalogue), "targets": targets}

    def dumps(self) -> str:
        """The file's text: sorted keys and lists, so an unchanged scan rewrites it byte for byte."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Baseline:
        """Parse a baseline file's JSON; ``ValueError`` names the first thing wrong with it."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r} "
                             "(write one with harness scan --write-baseline)")
        version = data.get("harness_version", "")
        catalogue = data.get("catalogue", [])
        raw_targets = data.get("targets")
        if not isinstance(version, str):
            raise ValueError("harness_version is not a string")
        if not isinstance(catalogue, list) or not all(isinstance(i, str) for i in catalogue):
            raise ValueError("catalogue is not a list of check ids")
        if not isinstance(raw_targets, dict):
            raise ValueError("targets is not an object")
        targets: dict[str, dict[str, Entry]] = {}
        for target, checks in raw_targets.items():
            if not isinstance(checks, dict):
                raise ValueError(f"targets.{target} is not an object")
            for check_id, item in checks.items():
                where = f"targets.{target}.{check_id}"
                if not isinstance(item, dict) or item.get("verdict") not in VERDICTS:
                    raise ValueError(f"{where}: verdict is not one of {', '.join(VERDICTS)}")
                steps = item.get("failing_steps", [])
                if not isinstance(steps, list):
                    raise ValueError(f"{where}.failing_steps is not a list")
                failing = []
                for s in steps:
                    if not isinstance(s, dict) or not isinstance(s.get("step"), str):
                        raise ValueError(f"{where}.failing_steps: an entry without a step text")
                    failing.append(FailingStep(s["step"], str(s.get("expected", "")),
                                               str(s.get("observed", ""))))
                targets.setdefault(target, {})[check_id] = Entry(item["verdict"], tuple(failing))
        return cls(targets, tuple(catalogue), version)


def load(path: Path) -> Baseline:
    """Read a baseline file; a missing, unreadable or malformed one is a ``SetupError`` (one line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SetupError(f"baseline {path}: no such file (write one with --write-baseline)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SetupError(f"baseline {path}: cannot read it: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SetupError(f"baseline {path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        return Baseline.from_dict(data)
    except ValueError as exc:
        raise SetupError(f"baseline {path}: {exc}") from None


# -- comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One line of a comparison: what changed for ``check`` on ``target`` since the baseline."""

    kind: ChangeKind
    target: str
    check: str
    #: The step identities concerned (a new violation: all its failing steps; a new or fixed
    #: step: that one; a fixed check: the steps the baseline accepted).
    steps: tuple[str, ...] = ()
    detail: str = ""

    @property
    def failing(self) -> bool:
        return self.kind in NEW_KINDS

    def line(self) -> str:
        """``new failing step: <step> (expected …, observed …)`` and the like, for humans."""
        label = self.kind.replace("_", " ")
        if self.kind in ("new_failing_step", "fixed_step", "changed") and self.steps:
            return f"{label}: {self.steps[0]}" + (f" ({self.detail})" if self.detail else "")
        return label + (f": {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "check": self.check,
                "steps": list(self.steps), "detail": self.detail}


@dataclass(frozen=True)
class Comparison:
    """The changes of a scan against a baseline, plus notes (a target it does not know, …)."""

    changes: tuple[Change, ...]
    #: ``(target, text)``; target ``""`` for a note about the whole baseline.
    notes: tuple[tuple[str, str], ...] = ()
    baseline_version: str = ""
    source: str = ""

    def of(self, *kinds: ChangeKind) -> list[Change]:
        return [c for c in self.changes if c.kind in kinds]

    @property
    def new(self) -> list[Change]:
        """What fails the comparison: new violations, new failing steps, new errors."""
        return [c for c in self.changes if c.failing]

    @property
    def fixed(self) -> list[Change]:
        return self.of("fixed", "fixed_step")

    @property
    def failed(self) -> bool:
        return bool(self.new)

    @property
    def exit_status(self) -> int:
        """1 on anything new, else 0 (accepted findings alone do not fail)."""
        return 1 if self.failed else 0

    def for_target(self, target: str) -> Comparison:
        return replace(self, changes=tuple(c for c in self.changes if c.target == target),
                       notes=tuple(n for n in self.notes if n[0] in ("", target)))

    def state_of(self, target: str, check: str) -> str:
        """SARIF's ``baselineState`` of a present result: ``new``, ``updated`` (already in the
        baseline, but with steps added, fixed or observed differently) or ``unchanged``."""
        kinds = {c.kind for c in self.changes if c.target == target and c.check == check}
        if kinds & {"new_violation", "new_error"}:
            return "new"
        if kinds & {"new_failing_step", "fixed_step", "changed", "unjudged"}:
            return "updated"
        return "unchanged"

    def summary(self) -> str:
        """``1 new, 11 accepted, 1 fixed`` (kinds with a count only; ``new`` counts every new_*)."""
        count = Counter(c.kind for c in self.changes)
        parts = [f"{len(self.new)} new"]
        parts += [f"{count[k]} {k.replace('_', ' ')}" for k in KIND_ORDER if k not in NEW_KINDS and count[k]]
        return ", ".join(parts)

    def lines(self) -> list[str]:
        """The comparison for a terminal: a heading, then one line per change worth reading."""
        where = f" with {self.source}" if self.source else ""
        out = [f"baseline comparison{where}: {self.summary()}"
               + ("" if self.failed else " (nothing new: exit 0)")]
        out += [f"note: {text}" for _, text in self.notes]
        for c in sorted(self.changes, key=lambda c: (_RANK[c.kind], c.target, c.check)):
            if c.kind == "accepted":
                continue  # counted in the heading; listing twelve known gaps would bury the news
            tag = "NEW" if c.failing else c.kind.split("_")[0].upper()
            out.append(f"{tag:9}{c.target:10} {c.check}  {c.line()}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "baseline_harness_version": self.baseline_version,
                "status": "new findings" if self.failed else "nothing new",
                "exit_status": self.exit_status, "summary": self.summary(),
                "new": [c.as_dict() for c in self.new],
                "fixed": [c.as_dict() for c in self.fixed],
                "changes": [c.as_dict() for c in self.changes], "notes": [text for _, text in self.notes]}


def _detail(step: FailingStep) -> str:
    return f"expected {step.expected}, observed {step.observed}"


def compare(baseline: Baseline, results: Sequence[CheckResult], *, source: str = "") -> Comparison:
    """Compare ``results`` with ``baseline``: pure, the results are data (see the module docstring)."""
    changes: list[Change] = []
    notes: list[tuple[str, str]] = []
    for target in dict.fromkeys(r.target for r in results):
        if target not in baseline.targets:
            known = ", ".join(baseline.targets) or "none"
            notes.append((target, f"target {target} is not in the baseline (it has {known}): "
                                  "every violation is new"))
    if baseline.harness_version and baseline.harness_version != __version__:
        notes.append(("", f"the baseline was written by harness {baseline.harness_version}, "
                          f"this is {__version__}"))
    for r in results:
        entry = baseline.targets.get(r.target, {}).get(r.id)
        was = entry.verdict if entry is not None else None
        now = failing_steps(r)
        if r.verdict == "violated":
            if entry is None or was != "violated":
                why = (f"was {was}" if was is not None else
                       "not in the baseline's catalogue" if r.id not in baseline.catalogue
                       else "not in the baseline")
                first = next(iter(now.values()), None)
                detail = why + (f"; {first.step}: {_detail(first)}" if first else "")
                changes.append(Change("new_violation", r.target, r.id, tuple(now), detail))
                continue
            accepted = entry.steps
            for ident, step in now.items():
                if ident not in accepted:
                    changes.append(Change("new_failing_step", r.target, r.id, (ident,), _detail(step)))
                elif accepted[ident].observed != step.observed:
                    changes.append(Change("changed", r.target, r.id, (ident,),
                                          f"observed {accepted[ident].observed} → {step.observed}"))
            for ident in accepted:
                if ident not in now:
                    changes.append(Change("fixed_step", r.target, r.id, (ident,), "passes now"))
            if all(ident in accepted for ident in now):
                changes.append(Change("accepted", r.target, r.id, tuple(now)))
        elif r.verdict == "error":
            if was == "error":
                changes.append(Change("accepted", r.target, r.id, (), "could not run, as in the baseline"))
            else:
                reason = str(r.evidence[0].get("reason", "")) if r.evidence else ""
                hidden = "; its accepted findings are not seen" if was == "violated" else ""
                detail = f"could not run (was {was or 'not in the baseline'}): {reason}{hidden}"
                changes.append(Change("new_error", r.target, r.id, (), detail))
        elif was == "violated" and entry is not None:
            steps = tuple(f.step for f in entry.failing)
            if r.verdict == "holds":
                changes.append(Change("fixed", r.target, r.id, steps, "was violated, now holds"))
            else:
                reason = str(r.evidence[0].get("reason", "")) if r.evidence else ""
                changes.append(Change("unjudged", r.target, r.id, steps,
                                      f"was violated, now {r.verdict}" + (f": {reason}" if reason else "")))
    return Comparison(tuple(changes), tuple(notes), baseline.harness_version, source)


__all__ = ["FORMAT", "Baseline", "Change", "Comparison", "Entry", "FailingStep", "compare",
           "failing_steps", "load", "normalise", "step_identity"]
