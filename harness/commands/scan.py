"""``harness scan``: run the check catalogue on one target or all shipped ones and report the findings.

Exit status: 0 every check holds (or is not applicable); 1 at least one check is violated;
2 usage or setup error (unknown target or check, unreachable database, no pepper, unwritable
output) or, with nothing violated, a check that could not run (verdict ``error``).

With ``--baseline FILE`` (``harness.baseline``) the status is the comparison's instead: 1 on a new
violated check, a new failing step inside an already violated one, or a new ``error``; 0 when only
accepted findings remain; 2 for a missing or malformed baseline. ``--write-baseline FILE`` writes
the scan as the accepted baseline and exits 0 (with ``--baseline`` too: the comparison's status),
refusing, with 2, a scan in which a check could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from harness import baseline as baseline_file
from harness.checks import SHIPPED_TARGETS, CheckResult, catalogue_frame, scan, select
from harness.cli import EXIT_OK, EXIT_USAGE, EXIT_VIOLATED
from harness.database import connect
from harness.errors import SetupError
from harness.report import FORMATS, render, summary_line
from harness.settings import Settings
from harness.targets import known_targets
from harness.targets.endpoint import is_description


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "scan",
        help="run the check catalogue on a target and report the findings",
        description="Run every check (PKCE, codes, replay and families, refresh rotation, at rest, "
                    "concurrency) on a fresh instance of the target and print the verdicts.",
        epilog="Exit status: 0 nothing violated, 1 a check violated, 2 usage or setup error "
               "(or a check that could not run); with --baseline: 1 only on a new finding (a new "
               "violated check, a new failing step in an already violated one, a new error), 0 when "
               "only accepted findings remain. JSON: one object {\"target\", \"checks\"} per "
               "target; with --all-targets a list of them.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", default=None,
                       help=f"target: {', '.join(known_targets())}, package.module:factory or "
                            "an endpoint description (a .toml file: a real server over HTTP) "
                            "(default HARNESS_TARGET or faithful)")
    where.add_argument("--all-targets", action="store_true",
                       help=f"scan every shipped target ({', '.join(SHIPPED_TARGETS)}), side by side")
    parser.add_argument("--format", choices=FORMATS, default="table", help="report format (default table)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the report to FILE instead of stdout")
    parser.add_argument("--only", nargs="+", metavar="ID", default=None,
                        help="only these checks: ids or theme prefixes (e.g. pkce replay.cross-client)")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--keep-rows", action="store_true",
                        help="keep the clients, codes and tokens the checks created (default: delete them)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="FILE",
                        help="compare with the accepted findings in FILE: exit 1 only on new ones "
                             "(down to a new failing step inside an already violated check)")
    parser.add_argument("--write-baseline", type=Path, default=None, metavar="FILE",
                        help="write this scan's findings to FILE as the accepted baseline (JSON)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.set_defaults(handler=run)


def exit_status(results: list[CheckResult]) -> int:
    verdicts = {r.verdict for r in results}
    if "violated" in verdicts:
        return EXIT_VIOLATED
    if "error" in verdicts:
        return EXIT_USAGE
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(catalogue_frame()[["id", "severity", "source", "title"]].to_string(index=False))
        return EXIT_OK
    only = select(args.only)  # unknown check ids fail here, before any database work
    targets = list(SHIPPED_TARGETS) if args.all_targets else [args.target or Settings.from_env().target]
    pepper = args.pepper or Settings.from_env().pepper
    if not pepper and not all(is_description(t) for t in targets):
        raise SetupError("no at-rest pepper: set HARNESS_AT_REST_PEPPER or pass --pepper")
    for path in (args.output, args.write_baseline):
        if path is not None and not path.parent.exists():
            raise SetupError(f"cannot write {path}: directory {path.parent} does not exist")
    # Read before any database work: a missing or malformed baseline is a usage error, found at once.
    accepted = baseline_file.load(args.baseline) if args.baseline is not None else None
    results: list[CheckResult] = []
    started = time.monotonic()
    remote = [t for t in targets if is_description(t)]
    with contextlib.ExitStack() as stack:
        # A server described over HTTP needs no database of the harness's: none is started for it.
        db = stack.enter_context(connect()) if len(remote) < len(targets) else None
        for target in targets:
            t0 = time.monotonic()
            found = scan(db, target, only=only, pepper=pepper, keep_rows=args.keep_rows)
            results += found
            print(f"scanned {target}: {len(found)} checks in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr)
    command = " ".join(["harness scan", "--all-targets" if args.all_targets else f"--target {targets[0]}",
                        f"--format {args.format}", *(["--only", *args.only] if args.only else []),
                        *([f"--baseline {args.baseline}"] if args.baseline else []),
                        *([f"--output {args.output}"] if args.output else [])])
    comparison = (baseline_file.compare(accepted, results, source=str(args.baseline))
                  if accepted is not None else None)
    report = render(results, args.format, all_targets=args.all_targets, command=command,
                    comparison=comparison)
    if args.output is not None:
        try:
            args.output.write_text(report)
        except OSError as exc:
            raise SetupError(f"cannot write {args.output}: {exc.strerror}") from exc
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(report)
    print(f"{summary_line(results)} ({len(only)} checks per target, {time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    if comparison is not None:
        print(f"baseline {args.baseline}: {comparison.summary()}"
              + ("" if comparison.failed else " (nothing new)"), file=sys.stderr)
    if args.write_baseline is not None:
        write_baseline(args.write_baseline, results)
    if comparison is not None:
        return comparison.exit_status
    return EXIT_OK if args.write_baseline is not None else exit_status(results)


def write_baseline(path: Path, results: list[CheckResult]) -> None:
    """Write ``results`` as the accepted baseline; a check that could not run is refused.

    Accepting an ``error`` would hide whatever that check would find once it runs again, so the
    baseline only ever records checks that judged the target (leave the others out with --only).
    """
    errors = [f"{r.target}/{r.id}" for r in results if r.verdict == "error"]
    if errors:
        raise SetupError(f"not writing baseline {path}: {len(errors)} check(s) could not run "
                         f"({', '.join(errors)}); fix them or leave them out with --only")
    accepted = baseline_file.Baseline.from_results(results)
    try:
        path.write_text(accepted.dumps(), encoding="utf-8")
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc.strerror}") from exc
    found = sum(len(checks) for checks in accepted.targets.values())
    violated = sum(1 for r in results if r.verdict == "violated")
    print(f"wrote baseline {path}: {found} checks, {violated} accepted findings "
          f"({', '.join(accepted.targets)})", file=sys.stderr)
