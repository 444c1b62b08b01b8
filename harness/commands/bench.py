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

# The numbers are taken as text and checked in run(), not by argparse types: a refusal is then
# one line (argparse would print its usage block first), and it comes before any connection.


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--clients: expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--clients: client counts must be positive integers, got {text!r}")
    return counts


def _at_least_1(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{option} must be a whole number, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")
    return value


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
    parser.add_argument("--clients", default="2,4,8,16",
                        help="comma-separated client counts (default 2,4,8,16)")
    parser.add_argument("--duration", default="5",
                        help="whole seconds per segment (default 5)")
    parser.add_argument("--rounds", default="1",
                        help="alternate pgbench and harness segments this many times (default 1)")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                        help="off: both sides commit without waiting for the WAL flush, which takes "
                        "the disk's fsync latency out of the comparison (default on)")
    parser.add_argument("--exchange", action="store_true",
                        help="the whole exchange instead of the claim: pgbench runs the port's three "
                        "statements (claim, new refresh token, link) as one script, the harness its "
                        "real exchange_code on the green path")
    parser.add_argument("--paths", default=None,
                        help="comma-separated harness paths: target, green, claim, mux "
                        "(default all four; with --exchange, green, and http given --endpoint)")
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help="with --exchange, also time the token endpoint of a `harness serve` "
                        "on this database and pepper (e.g. http://127.0.0.1:8000): the http path")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--format", choices=["table", "md", "json"], default="table")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        clients = _client_counts(args.clients)
        duration = _at_least_1("--duration", args.duration)
        rounds = _at_least_1("--rounds", args.rounds)
    except ValueError as exc:
        print(f"harness bench: error: {exc}", file=sys.stderr)
        return 2
    known = ("target", "green", "claim", "mux", "http")
    paths = [p.strip() for p in (args.paths or "").split(",") if p.strip()] or (
        ["green"] if args.exchange else list(known[:4]))
    unknown = [p for p in paths if p not in known]
    if unknown:
        raise SetupError(f"unknown bench path {unknown[0]!r}: use {', '.join(known)}")
    pepper = args.pepper or Settings.from_env().pepper
    if not pepper:
        raise SetupError("no pepper: set HARNESS_AT_REST_PEPPER or pass --pepper")
    if args.endpoint is not None and not args.endpoint.startswith(("http://", "https://")):
        raise SetupError(f"--endpoint must be an http(s) URL, got {args.endpoint!r}")
    extra = 1 if args.exchange and args.endpoint and "http" not in paths else 0
    segments = len(clients) * rounds * (1 + len(paths) + extra)
    with connect() as db, tqdm(total=segments, file=sys.stderr,
                               unit="segment", disable=args.no_progress) as bar:
        def step(what: str) -> None:
            bar.set_description(what)
            bar.update(1)

        frame = bench(db, clients=clients, duration_s=duration, pepper=pepper,
                      rounds=rounds, paths=paths, exchange=args.exchange, endpoint=args.endpoint,
                      synchronous_commit=args.synchronous_commit == "on", progress=step)
    if args.format == "json":
        print(json.dumps(frame.to_dict(orient="records"), indent=2))
    elif args.format == "md":
        print(markdown_table(frame))
    else:
        print(frame.to_string(index=False))
    return 0
