"""``harness matrix``: claim strategies × isolation levels, double wins, 40001s and throughput per cell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from harness.cli import positive_int
from harness.database import connect
from harness.matrix import isolation_matrix, judge
from harness.report import markdown_table
from harness.sut.claims import Isolation, Strategy


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "matrix",
        help="the isolation matrix: strategies x isolation levels, one race per cell",
        description="Race every claim strategy (atomic UPDATE...RETURNING, SELECT ... FOR UPDATE, "
        "naive SELECT-then-UPDATE) at READ COMMITTED, REPEATABLE READ and SERIALIZABLE. "
        "Exit status: 0 when atomic and for_update never double-win and the naive control at "
        "READ COMMITTED is caught; 1 otherwise; 2 usage or setup error.",
    )
    parser.add_argument("--target", default="faithful", help="target whose claim is varied")
    parser.add_argument("--racers", type=positive_int, default=16)
    parser.add_argument("--codes", type=positive_int, default=200, help="codes per cell")
    parser.add_argument("--strategy", action="append", choices=[s.value for s in Strategy],
                        help="only these strategies (repeatable; default all)")
    parser.add_argument("--isolation", action="append", choices=[i.value for i in Isolation],
                        help="only these isolation levels (repeatable; default all)")
    parser.add_argument("--retry-serialization", type=int, default=0, metavar="N",
                        help="retry attempts that failed with SQLSTATE 40001 up to N times")
    parser.add_argument("--processes", type=positive_int, default=None)
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--format", choices=["table", "md", "json"], default="table")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.retry_serialization < 0:
        print("harness matrix: error: --retry-serialization must be >= 0", file=sys.stderr)
        return 2
    strategies = args.strategy or [s.value for s in Strategy]
    isolations = args.isolation or [i.value for i in Isolation]
    with connect() as db, tqdm(total=len(strategies) * len(isolations), unit="cell",
                               file=sys.stderr, disable=args.no_progress) as bar:
        def step(cell: str) -> None:
            bar.set_postfix_str(f"done {cell}")
            bar.update(1)

        frame = isolation_matrix(db, racers=args.racers, codes=args.codes, pepper=args.pepper,
                                 target=args.target, strategies=strategies, isolations=isolations,
                                 retry_serialization=args.retry_serialization,
                                 processes=args.processes, progress=step)
    problems = judge(frame)
    if args.format == "json":
        print(json.dumps({"racers": args.racers, "codes": args.codes, "target": args.target,
                          "cells": frame.to_dict(orient="records"), "problems": problems},
                         indent=2, default=str))
    else:
        print(f"{args.racers} racers x {args.codes} codes per cell, target {args.target}, "
              f"retry on 40001: {args.retry_serialization}")
        print(markdown_table(frame) if args.format == "md" else frame.to_string(index=False))
        for problem in problems:
            print(f"problem: {problem}")
        print("verdict:", "PASS" if not problems else "FAIL")
    return 1 if problems else 0
