"""``harness demo``: the main job: a reviewer's report on the port of systemprompt-oauth 0.14.4.

It scans every shipped target with the whole check catalogue, races ``faithful`` and ``naive``,
and prints, in this order: what is under review, the findings on ``faithful`` grouped by severity
(title, RFC section, the one step that fails), the controls that show the harness can tell
(``hardened`` clean, ``naive`` caught, the race), every check on every target side by side, and
where to go next. ``HARNESS_TARGET``, when it names anything but a shipped target (a
``package.module:factory`` or an endpoint description ``.toml``), is scanned too and shown as a
fourth column; its findings are reported as findings, with no expectation.

Exit status 0 when the harness behaved as expected (``harness.checks.expected``): every shipped
target showed exactly the verdicts expected of it (faithful's known findings, hardened none, the
naive control caught by every check but one), the race on faithful passed and the race on naive
double-won. That says the harness works, not that the code under review is sound. 1 otherwise;
2 on a setup error (including a ``HARNESS_TARGET`` that cannot be loaded).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.baseline import compare
from harness.baseline import load as load_baseline
from harness.checks import SEVERITIES, SHIPPED_TARGETS, CheckResult, findings_table, probe, scan
from harness.checks.expected import expected_verdict, surprises
from harness.cli import EXIT_OK, EXIT_VIOLATED
from harness.database import Database, connect, describe_target
from harness.errors import SetupError
from harness.race import RaceReport, race, verdict
from harness.report import first_failure, summary_line
from harness.settings import Settings
from harness.targets.endpoint import is_description

#: What a short race must show on each target (the control must fail, or the race proves nothing).
RACE_EXPECTED = {"faithful": "pass", "naive": "double win"}
#: faithful's accepted findings, step by step (``harness scan --baseline``'s format).
FAITHFUL_BASELINE = Path(__file__).resolve().parents[1] / "checks" / "faithful.baseline.json"
#: The code under review, as the report names it.
UNDER_REVIEW = "the Rust crate systemprompt-oauth 0.14.4"
WIDTH = 100


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="the main job: a review of faithful (systemprompt-oauth 0.14.4), with its controls",
        description="Scan the three shipped targets with the whole check catalogue, report the "
                    "findings on faithful (the port of systemprompt-oauth 0.14.4) by severity, show "
                    "the controls (hardened clean, naive caught, a race on faithful and naive) and "
                    "every check side by side. HARNESS_TARGET, if it names another target "
                    "(package.module:factory or a .toml endpoint description), is scanned too.",
        epilog="Exit status: 0 the harness behaved as expected (every shipped target showed what "
               "harness.checks.expected says, the races went as expected): not a verdict on the "
               "code under review; 1 something did not; 2 usage or setup error.")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--racers", type=int, default=8, help="racers per code (default 8)")
    parser.add_argument("--codes", type=int, default=200, help="codes per race (default 200)")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class RaceRow:
    target: str
    expected: str
    got: str
    report: RaceReport

    @property
    def as_expected(self) -> bool:
        return self.got == self.expected


def extra_target() -> str | None:
    """``HARNESS_TARGET`` when it names something other than a shipped target, else ``None``."""
    target = Settings.from_env().target
    return None if target in SHIPPED_TARGETS else target


def side_by_side(results: Sequence[CheckResult]) -> pd.DataFrame:
    """Check × target, each shipped target's verdict marked ``*`` where it differs from the expectation."""
    frame = findings_table(results, details=False)
    sev = {r.id: r.spec.severity for r in results}
    frame.insert(1, "severity", frame["id"].map(sev))
    for target in SHIPPED_TARGETS:
        if target in frame:
            frame[target] = [v if v == expected_verdict(target, i) else f"{v} *"
                             for i, v in zip(frame["id"], frame[target], strict=True)]
    return frame.fillna("-")


def _wrap(text: str, indent: str, hang: int = 2) -> str:
    """``text`` filled to ``WIDTH``, the first line after ``indent``, the others ``hang`` further in."""
    return textwrap.fill(text, width=WIDTH, initial_indent=indent,
                         subsequent_indent=" " * (len(indent) + hang),
                         break_long_words=False, break_on_hyphens=False)


def _mine(results: Sequence[CheckResult], target: str) -> list[CheckResult]:
    return [r for r in results if r.target == target]


def rfcs_cited(results: Sequence[CheckResult]) -> str:
    """``RFCs 6749, 7636 and 9700``: the RFCs the checks' sources cite, in number order."""
    numbers = [str(n) for n in sorted({int(n) for r in results
                                       for n in re.findall(r"RFC (\d+)", r.spec.source)})]
    if len(numbers) > 1:
        return f"RFCs {', '.join(numbers[:-1])} and {numbers[-1]}"
    return f"RFC {numbers[0]}" if numbers else "the RFCs"


def severity_counts(findings: Sequence[CheckResult]) -> str:
    """``5 high, 4 medium, 3 low`` (severities with a count only, most severe first)."""
    return ", ".join(f"{n} {s}" for s in SEVERITIES
                     if (n := sum(1 for r in findings if r.spec.severity == s)))


def findings_section(results: Sequence[CheckResult], target: str, heading: str) -> list[str]:
    """The violated checks of ``target``, grouped by severity: title, RFC section, the failing step."""
    mine = _mine(results, target)
    findings = [r for r in mine if r.verdict == "violated"]
    lines = [f"{heading}: {len(findings)} of {len(mine)} checks violated"
             + (f" ({severity_counts(findings)})" if findings else "")]
    unjudged = sum(1 for r in mine if r.verdict == "not_applicable")
    if unjudged:
        lines.append(_wrap(f"{unjudged} checks not applicable: the target does not offer what they "
                           f"need (harness scan --target {target} names it for each)", "  "))
    for severity in SEVERITIES:
        group = [r for r in findings if r.spec.severity == severity]
        if not group:
            continue
        lines += ["", f"  {severity.upper()} ({len(group)})"]
        for r in group:
            lines.append(_wrap(f"{r.id} — {r.spec.title}", "  - ", 0))
            lines.append(_wrap(f"source: {r.spec.source}", "    "))
            lines.append(_wrap(f"fails at: {first_failure(r) or '(see harness scan)'}", "    "))
    other = [r for r in mine if r.verdict in ("error", "inconclusive")]
    if other:
        lines += ["", "  COULD NOT BE JUDGED"]
        for r in other:
            lines.append(_wrap(f"{r.id} ({r.verdict}): {first_failure(r)}", "  - ", 0))
    return lines


def race_table(races: Sequence[RaceRow]) -> pd.DataFrame:
    """One row per race: the verdict, the winners, and the overlap measured (did they really race?)."""
    rows = []
    for row in races:
        ov, wins = row.report.overlap.summary, row.report.winners.summary
        codes = int(ov.get("keys") or 0) or int(row.report.stats.get("codes") or 0)
        spread = ov.get("median_spread_us")
        rows.append({
            "target": row.target,
            "verdict": row.got,
            "expected": row.expected,
            "won >1": f"{wins.get('double_wins', 0)}/{codes}",
            "no winner": wins.get("no_winner", 0),
            "raced": f"{ov.get('keys_raced', 0)}/{codes}",
            "max in flight": ov.get("max_in_flight", 0),
            "median spread": "-" if spread is None else f"{float(spread):.0f} µs",
            "codes/s": f"{float(row.report.stats.get('codes_per_s', 0.0)):.0f}",
        })
    return pd.DataFrame(rows)


def controls_section(results: Sequence[CheckResult], races: Sequence[RaceRow], racers: int,
                     codes: int, naive_as_designed: bool) -> list[str]:
    lines = ["CONTROLS: can the harness tell a sound repository from a broken one?"]
    hardened = _mine(results, "hardened")
    bad = [r.id for r in hardened if r.verdict != "holds"]
    held = len(hardened) - len(bad)
    lines.append(_wrap(
        "hardened (the same design, every finding closed): "
        + (f"clean, {held} of {len(hardened)} checks hold" if not bad
           else f"NOT clean: {len(bad)} of {len(hardened)} checks do not hold ({', '.join(bad)})"),
        "  - "))
    naive = _mine(results, "naive")
    caught = [r.id for r in naive if r.verdict == "violated"]
    passed = [r.id for r in naive if r.verdict != "violated"]
    lines.append(_wrap(
        f"naive (a deliberately broken repository): caught by {len(caught)} of {len(naive)} checks"
        + (f"; it passes {', '.join(passed)}" if passed else "")
        + (", as designed" if passed and naive_as_designed else ""), "  - "))
    by_target = {row.target: row for row in races}
    story = []
    if "faithful" in by_target:
        f = by_target["faithful"]
        story.append("faithful passes" if f.got == "pass" else f"faithful gets {f.got!r}")
    if "naive" in by_target:
        n = by_target["naive"]
        wins = n.report.winners.summary.get("double_wins", 0)
        codes_n = n.report.overlap.summary.get("keys") or codes
        story.append(f"naive double-wins {wins} of {codes_n} codes" if n.got == "double win"
                     else f"naive gets {n.got!r}")
    lines.append(_wrap(f"race: {racers} racers released together on each of {codes} codes, from several "
                       f"processes; each code may be won once: {' and '.join(story)}.", "  - "))
    lines += ["", *("    " + line for line in race_table(races).to_string(index=False).splitlines())]
    return lines


def next_section(extra: str | None) -> list[str]:
    rows = [
        (".venv/bin/harness scan --target faithful",
         "each finding, step by step (also --format md|json|junit)"),
        ("python3 dev.py lab", "the notebooks: the findings replayed in JupyterLab"),
        ("docs/findings.md", "the three targets' findings as a document, with evidence"),
        ('README, "Test your own server"', "your implementation: HARNESS_TARGET=pkg.module:factory"),
        ("", "or a server over HTTP, described in a .toml"),
    ]
    if extra is not None:
        rows.insert(1, (f".venv/bin/harness scan --target {extra}", "your target's findings, step by step"))
    width = max(len(a) for a, _ in rows)
    return ["NEXT"] + [f"  {a.ljust(width)}  {b}" for a, b in rows]


def verdict_line(ok: bool, faithful_findings: int, extra: str | None, extra_findings: int,
                 odd: int, races_odd: int) -> str:
    """The last line: what the exit status means, in words."""
    if ok:
        line = ("exit 0: the harness behaved as expected (each shipped target and race showed exactly "
                "what it should). This is not a pass for systemprompt-oauth 0.14.4: it has the "
                f"{faithful_findings} findings above")
        if extra is not None:
            line += f"; {extra} ({extra_findings} findings) is not judged by the exit status"
        return line + "."
    what = " and ".join(part for part in (f"{odd} verdicts" if odd else "",
                                          f"{races_odd} races" if races_odd else "") if part)
    return (f"exit 1: the harness did NOT behave as expected ({what} differ, see NOT AS EXPECTED): "
            "do not rely on these findings until that is understood.")


def run(args: argparse.Namespace) -> int:
    pepper = args.pepper or Settings.from_env().pepper
    if not pepper:
        raise SetupError("no at-rest pepper: set HARNESS_AT_REST_PEPPER or pass --pepper")
    extra = extra_target()
    remote = extra is not None and is_description(extra)
    if extra is not None and remote:
        _probe_extra(extra, None, pepper)  # a broken description fails before any database work
    with contextlib.ExitStack() as stack:
        db: Database = stack.enter_context(connect())
        if extra is not None and not remote:
            _probe_extra(extra, db, pepper)
        results: list[CheckResult] = []
        scanned = 0.0
        for target in [*SHIPPED_TARGETS, *([extra] if extra is not None else [])]:
            t0 = time.monotonic()
            print(f"scanning {target} …", end=" ", file=sys.stderr, flush=True)
            found = scan(None if target == extra and remote else db, target, pepper=pepper)
            results += found
            scanned += time.monotonic() - t0
            print(f"{len(found)} checks, {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        races: list[RaceRow] = []
        for target, want in RACE_EXPECTED.items():
            t0 = time.monotonic()
            print(f"racing {target}: {args.racers} racers × {args.codes} codes …", end=" ",
                  file=sys.stderr, flush=True)
            report = race(db, target, racers=args.racers, codes=args.codes, pepper=pepper)
            races.append(RaceRow(target, want, verdict(report), report))
            print(f"{time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        where = (f"an embedded PostgreSQL in {db.data_dir}" if db.embedded
                 else f"PostgreSQL at {describe_target(db.url)}")
    print(file=sys.stderr, flush=True)

    shipped = [r for r in results if r.target in SHIPPED_TARGETS]
    odd = surprises(shipped)
    odd_races = [row for row in races if not row.as_expected]
    # Below the verdicts, step by step: a new failing step inside a check faithful already
    # violates (a drift in its known gaps) would not change any verdict; the accepted baseline
    # names it (harness.baseline, regenerated with `harness scan --target faithful
    # --write-baseline harness/checks/faithful.baseline.json` when a gap changes on purpose).
    baseline_path = Path(os.environ.get("CLAIMCHECK_FAITHFUL_BASELINE") or FAITHFUL_BASELINE)
    drift = [change for change in compare(load_baseline(baseline_path),
                                          _mine(results, "faithful")).new]
    ok = not odd and not odd_races and not drift
    faithful = [r for r in _mine(results, "faithful") if r.verdict == "violated"]
    extra_found = [r for r in _mine(results, extra) if r.verdict == "violated"] if extra else []
    n_checks = len(_mine(results, "faithful"))

    title = f"claimcheck review: the authorization-code repository of {UNDER_REVIEW}"
    out = [title, "=" * len(title), "", "UNDER REVIEW",
           _wrap(f"What: the authorization-code repository of {UNDER_REVIEW}, ported to Python with "
                 "its SQL and behaviour kept, gaps included, as the target `faithful` "
                 "(harness/sut/faithful.py): codes stored as peppered HMAC-SHA-256 digests, redeemed "
                 "with one atomic UPDATE … WHERE used_at IS NULL RETURNING, PKCE, the refresh-token "
                 "family revoked when a spent code is replayed.", "  "),
           _wrap(f"How: {n_checks} checks, each a short scenario on a fresh instance, judged against "
                 f"{rfcs_cited(results)}; then races of {args.racers} racers × {args.codes} codes; "
                 f"on {where}.", "  ")]
    if extra is not None:
        out.append(_wrap(f"Also scanned: HARNESS_TARGET={extra} (your target: no expectations, its "
                         "verdicts are findings and do not change the exit status).", "  "))
    out += ["", *findings_section(results, "faithful", "FINDINGS on faithful")]
    if extra is not None:
        out += ["", *findings_section(results, extra, f"FINDINGS on {extra} (HARNESS_TARGET)")]
    naive_as_designed = not any(row["target"] == "naive" for row in odd)
    out += ["", *controls_section(results, races, args.racers, args.codes, naive_as_designed)]
    if not ok:
        out += ["", "NOT AS EXPECTED (see harness/checks/expected.py and the race table)"]
        out += [f"  - {row['target']} {row['id']}: expected {row['expected']}, got {row['verdict']}"
                for row in odd]
        out += [f"  - race on {row.target}: expected {row.expected}, got {row.got}" for row in odd_races]
        out += [f"  - faithful {change.check}, against its accepted baseline: {change.line()}"
                for change in drift]
    out += ["", "EVERY CHECK ON EVERY TARGET" + ("  (* = not as expected)" if odd else ""), ""]
    out += [side_by_side(results).to_string(index=False), ""]
    out += [f"{summary_line(results)}  (scans: {scanned:.1f} s)", ""]
    out += [*next_section(extra), ""]
    out.append(verdict_line(ok, len(faithful), extra, len(extra_found), len(odd) + len(drift),
                            len(odd_races)))
    print("\n".join(out))
    return EXIT_OK if ok else EXIT_VIOLATED


def _probe_extra(extra: str, db: Database | None, pepper: str) -> None:
    """Load ``HARNESS_TARGET`` once, so one that cannot be loaded is one line and exit 2, up front."""
    try:
        probe(extra, db, pepper)
    except SetupError as exc:
        raise SetupError(f"HARNESS_TARGET={extra}: {str(exc).removeprefix(f'target {extra!r}: ')}") from None
