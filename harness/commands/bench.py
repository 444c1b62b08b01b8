"""``harness bench``: pgbench on the claim statement vs the harness's claim path, at several client counts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from harness.bench import bench
from harness.database import connect
from harness.errors import SetupError
from harness.report import markdown_table
from harness.settings import Settings


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return counts


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="pgbench on the claim statement vs the harness's claim path (ratio per client count)",
        description="For each client count, on the same server in one run: pgbench -M prepared "
        "claiming distinct codes with the seed's atomic UPDATE ... RETURNING, then as many "
        "harness processes claiming distinct codes through the faithful target (harness_*, ratio), "
        "through the bare claim on one connection per process (claim_*), and through the claim "
        "sent without blocking from one process per core, pgbench's -j model (mux_*). "
        "Prints pgbench tps, harness ops/s and the ratios. "
        "Exit status 0, or 2 on a setup error.",
    )
    parser.add_argument("--clients", type=_client_counts, default=[2, 4, 8, 16],
                        help="comma-separated client counts (default 2,4,8,16)")
    parser.add_argument("--duration", type=int, default=5,
                        help="whole seconds per segment (default 5)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate pgbench and harness segments this many times (default 1)")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                        help="off: both sides commit without waiting for the WAL flush, which takes "
                        "the disk's fsync latency out of the comparison (default on)")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--format", choices=["table", "md", "json"], default="table")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    pepper = args.pepper or Settings.from_env().pepper
    if not pepper:
        raise SetupError("no pepper: set HARNESS_AT_REST_PEPPER or pass --pepper")
    if args.duration < 1 or args.rounds < 1:
        print("harness bench: error: --duration and --rounds must be at least 1", file=sys.stderr)
        return 2
    with connect() as db, tqdm(total=len(args.clients) * args.rounds * 4, file=sys.stderr,
                               unit="segment", disable=args.no_progress) as bar:
        def step(what: str) -> None:
            bar.set_description(what)
            bar.update(1)

        frame = bench(db, clients=args.clients, duration_s=args.duration, pepper=pepper,
                      rounds=args.rounds,
                      synchronous_commit=args.synchronous_commit == "on", progress=step)
    if args.format == "json":
        print(json.dumps(frame.to_dict(orient="records"), indent=2))
    elif args.format == "md":
        print(markdown_table(frame))
    else:
        print(frame.to_string(index=False))
    return 0
