"""``harness demo``: the main job: scan every shipped target side by side, then race faithful and naive.

Exit status 0 when every target behaves as expected (``harness.checks.expected``): faithful's
known gaps found, hardened clean, the naive control caught by every check but one, the race on
faithful passed and the race on naive failed with double wins. 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import pandas as pd

from harness.checks import SHIPPED_TARGETS, CheckResult, findings_table, scan
from harness.checks.expected import expected_verdict, surprises
from harness.cli import EXIT_OK, EXIT_VIOLATED
from harness.database import connect
from harness.errors import SetupError
from harness.race import race, verdict
from harness.report import summary_line
from harness.settings import Settings

#: What a short race must show on each target (the control must fail, or the race proves nothing).
RACE_EXPECTED = {"faithful": "pass", "naive": "double win"}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="the main job: scan faithful, hardened and naive side by side, then race",
        description="Scan the three shipped targets with the whole check catalogue, print the "
                    "findings side by side, then race faithful and naive.")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--racers", type=int, default=8, help="racers per code (default 8)")
    parser.add_argument("--codes", type=int, default=200, help="codes per race (default 200)")
    parser.set_defaults(handler=run)


def side_by_side(results: list[CheckResult]) -> pd.DataFrame:
    """Check × target, each verdict marked ``*`` where it differs from the expectation."""
    frame = findings_table(results, details=False)
    sev = {r.id: r.spec.severity for r in results}
    frame.insert(1, "severity", frame["id"].map(sev))
    for target in SHIPPED_TARGETS:
        frame[target] = [v if v == expected_verdict(target, i) else f"{v} *"
                         for i, v in zip(frame["id"], frame[target], strict=True)]
    return frame


def run(args: argparse.Namespace) -> int:
    pepper = args.pepper or Settings.from_env().pepper
    if not pepper:
        raise SetupError("no at-rest pepper: set HARNESS_AT_REST_PEPPER or pass --pepper")
    started = time.monotonic()
    with connect() as db:
        print(f"database: {db!r}\n")
        results: list[CheckResult] = []
        for target in SHIPPED_TARGETS:
            results += scan(db, target, pepper=pepper)
        scanned = time.monotonic() - started
        print(side_by_side(results).to_string(index=False))
        print(f"\n{summary_line(results)}  (scan: {scanned:.1f} s; * = not as expected)\n")
        odd = surprises(results)

        rows = []
        for target, want in RACE_EXPECTED.items():
            report = race(db, target, racers=args.racers, codes=args.codes, pepper=pepper)
            got = verdict(report)
            ov, wins = report.overlap.summary, report.winners.summary
            rows.append({"target": target, "racers": args.racers, "codes": args.codes,
                         "double_wins": wins["double_wins"], "no_winner": wins["no_winner"],
                         "raced": f"{float(ov.get('raced_fraction') or 0):.0%}",
                         "codes_per_s": round(float(report.stats.get("codes_per_s", 0.0))),
                         "verdict": got, "expected": want, "as_expected": got == want})
        races = pd.DataFrame(rows)
        print(races.to_string(index=False), "\n")

    found = sorted(r.id for r in results if r.target == "faithful" and r.verdict == "violated")
    print(f"faithful: {len(found)} findings of the seed: {', '.join(found)}")
    for row in odd:
        print(f"NOT AS EXPECTED: {row['target']} {row['id']}: expected {row['expected']}, "
              f"got {row['verdict']}", file=sys.stderr)
    ok = not odd and bool(races["as_expected"].all())
    print("every target behaved as expected: faithful's gaps found, hardened clean, naive caught"
          if ok else "SOME TARGET DID NOT BEHAVE AS EXPECTED (see above)")
    return EXIT_OK if ok else EXIT_VIOLATED
