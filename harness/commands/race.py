"""``harness race``: N racers × M codes from several processes, with the overlap, throughput and a verdict."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Any

from tqdm import tqdm

from harness.cli import EXIT_INTERRUPTED, positive_int
from harness.database import connect
from harness.errors import SetupError
from harness.nemesis import FAULTS
from harness.race import MIN_RACED_FRACTION, RaceInterrupted, RaceReport, race, race_http, verdict
from harness.settings import Settings
from harness.sut.claims import Isolation, Strategy
from harness.targets.endpoint import is_description

#: Double-won codes printed in the table (all of them are in the JSON).
_LISTED = 20



def register(sub: Any) -> None:
    parser = sub.add_parser(
        "race",
        help="race N racers on each of M codes; exit 1 on any double win",
        description="Race N racers (several OS processes) on each of M fresh codes, released "
        "together by a barrier per code; measure their overlap and throughput and judge the "
        "single-winner invariant. Exit status: 0 pass, 1 double win / code without a winner / "
        "no race / incomplete run, 2 usage or setup error.",
    )
    parser.add_argument("--target", default=None,
                        help="target (default HARNESS_TARGET or faithful): a shipped one, "
                             "package.module:factory, or an endpoint description (a .toml file) "
                             "to race a real server over HTTP")
    parser.add_argument("--client", default=None,
                        help="over HTTP: the description's client to race as (default its first)")
    parser.add_argument("--pkce", choices=["auto", "S256", "none"], default="auto",
                        help="over HTTP: mint codes with an S256 pair, without PKCE, or (auto) with "
                             "S256 if a probe code redeems that way, else without")
    parser.add_argument("--racers", type=positive_int, default=16, help="racers per code (default 16)")
    parser.add_argument("--codes", type=positive_int, default=200, help="codes to race (default 200)")
    parser.add_argument("--strategy", choices=[s.value for s in Strategy], default=None,
                        help="override the target's claim strategy")
    parser.add_argument("--isolation", choices=[i.value for i in Isolation], default=None,
                        help="override the target's claim isolation level")
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="racer processes (default: 2 per core, at most one per racer)")
    parser.add_argument("--operation", choices=["exchange", "validate"], default="exchange",
                        help="the grant flow (default) or the claim and its checks only")
    parser.add_argument("--retry-serialization", type=int, default=0, metavar="N",
                        help="retry an attempt that failed with SQLSTATE 40001 up to N times")
    parser.add_argument("--seed", default=None,
                        help="derive the codes from this seed (default: a random one)")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--nemesis", choices=list(FAULTS), default="none",
                        help="inject faults during the race (restart/pause: embedded server only)")
    parser.add_argument("--min-raced", type=float, default=MIN_RACED_FRACTION,
                        help="fraction of codes that must have raced (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run)


def summarise(report: RaceReport, status: str) -> dict[str, Any]:
    """The JSON document: settings, overlap, ops, throughput, invariant, nemesis, verdict."""
    s = report.stats
    return {
        "target": s["target"],
        "strategy": s["strategy"],
        "isolation": s["isolation"],
        "operation": s["operation"],
        "racers": s["racers"],
        "codes": s["codes"],
        "processes": s["processes"],
        "retry_serialization": s["retry_serialization"],
        "elapsed_s": round(s["elapsed_s"], 3),
        "attempts_per_s": round(s["attempts_per_s"], 1),
        "codes_per_s": round(s["codes_per_s"], 1),
        "ops": s["ops"],
        "serialization_failures": s["serialization_failures"],
        "overlap": report.overlap.summary,
        "single_winner": report.winners.summary,
        "double_won": s["double_won"],
        "no_winner": s["no_winner"],
        "nemesis": s.get("nemesis"),
        "server_concurrency": s.get("server_concurrency"),
        "after_race": s.get("after_race"),
        "tokens_returned": s.get("tokens_returned"),
        "tokens_committed": s.get("tokens_committed"),
        "cpu": s.get("cpu"),
        "errors": s["errors"],
        "verdict": status,
    }


def _table(doc: dict[str, Any]) -> str:
    ov, sw, ops = doc["overlap"], doc["single_winner"], doc["ops"]
    spread = ov.get("median_spread_us")
    lines = [
        f"target {doc['target']}  strategy {doc['strategy']}  isolation {doc['isolation']}  "
        f"operation {doc['operation']}",
        f"racers {doc['racers']}  codes {doc['codes']}  processes {doc['processes']}",
        f"overlap      {ov['keys_raced']}/{ov['keys']} codes raced (>= 2 attempts in flight before "
        f"the first returned), all {doc['racers']} in flight on {ov['keys_all_in_flight']}, "
        f"max in flight {ov['max_in_flight']}, median start spread "
        + (f"{spread / 1000:.2f} ms" if spread is not None else "n/a"),
        f"ops          {ops['invoke']} invoked: {ops['ok']} ok, {ops['fail']} fail, "
        f"{ops['info']} info (indeterminate); {doc['serialization_failures']} serialization "
        "failures (40001)",
        f"throughput   {doc['attempts_per_s']:.0f} attempts/s, {doc['codes_per_s']:.0f} codes/s "
        f"over {doc['elapsed_s']:.2f} s",
        f"single winner {sw['keys']} codes: {sw['double_wins']} double wins, {sw['no_winner']} "
        f"without a winner, {sw['keys_indeterminate']} indeterminate",
    ]
    cpu = doc.get("cpu")
    if cpu and cpu.get("client_us_per_attempt") is not None:
        server = (f", server {cpu['server_s']:.1f} s" if cpu.get("server_s") is not None
                  else ", server elsewhere")
        per = (f"{cpu['client_us_per_attempt']:.0f} µs client"
               + (f" + {cpu['server_us_per_attempt']:.0f} µs server"
                  if cpu.get("server_us_per_attempt") is not None else ""))
        lines.append(f"cpu          racers {cpu['racers_s']:.1f} s, this process "
                     f"{cpu['parent_s']:.1f} s{server}: {per} per attempt")
    if doc["nemesis"]:
        n = doc["nemesis"]
        lines.append(f"nemesis      {n['fault']}: {n['injected']} faults injected, {n['failed']} "
                     f"failed, {n['terminated_backends']} backends terminated")
    if doc.get("server_concurrency") is not None:
        lines.append(f"server       {doc['target']}: declares concurrency {doc['server_concurrency']}"
                     + (" (1: requests never run in parallel, so nothing can race)"
                        if doc["server_concurrency"] <= 1 else ""))
        committed = doc.get("tokens_committed")
        lines.append(f"tokens       {doc.get('tokens_returned')} distinct token sets returned"
                     + (f", {committed} committed (token_count_sql)" if committed is not None else ""))
    after = doc.get("after_race") or {}
    if after:
        lines.append(f"after race   {after['replays_refused']}/{after['codes_replayed']} replays of won "
                     f"codes refused; of {after['winning_token_sets']} winning token sets, "
                     f"{after['refresh_tokens_usable_after_replay']} refresh tokens still usable"
                     + (f", {after['access_tokens_active_after_replay']} access tokens still active"
                        if after.get("access_tokens_active_after_replay") is not None else ""))
    for what, rows in (("double-won", doc["double_won"]), ("no winner", doc["no_winner"])):
        if rows:
            lines.append(f"{what} codes ({len(rows)}; index, "
                         + ("at-rest digest, " if rows[0]["digest"] != "-" else "") + "wins):")
            lines += [f"  #{r['code']:<6} " + (f"{r['digest']}…  " if r["digest"] != "-" else "")
                      + f"{r['wins']}" for r in rows[:_LISTED]]
            if len(rows) > _LISTED:
                lines.append(f"  … and {len(rows) - _LISTED} more (see --format json)")
    for error in doc["errors"][:5]:
        lines.append(f"error        {error}")
    lines.append(f"verdict      {doc['verdict'].upper()}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.min_raced <= 1.0:
        raise SetupError("--min-raced must be between 0 and 1")
    if args.retry_serialization < 0:
        raise SetupError("--retry-serialization must be >= 0")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise SetupError("--timeout must be a positive number of seconds")
    interrupted = False
    target = args.target or Settings.from_env().target
    remote = is_description(target)
    if remote:
        fixed = [flag for flag, given in (("--strategy", args.strategy), ("--isolation", args.isolation),
                                          ("--nemesis", args.nemesis != "none"),
                                          ("--retry-serialization", args.retry_serialization),
                                          ("--operation validate", args.operation != "exchange"),
                                          ("--seed", args.seed)) if given]
        if fixed:
            raise SetupError(f"{', '.join(fixed)}: not for a server reached over HTTP (its claim is "
                             "its own; its codes come from its authorization endpoint)")
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=args.codes, unit="code", file=sys.stderr, desc="race",
                                       disable=args.no_progress, mininterval=0.5))

        def advance(codes: int) -> None:
            bar.update(codes)

        try:
            if remote:
                report = race_http(target, racers=args.racers, codes=args.codes,
                                   client=args.client, processes=args.processes, progress=advance,
                                   timeout_s=args.timeout, pkce=args.pkce)
            else:
                db = stack.enter_context(connect())
                report = race(db, target, racers=args.racers, codes=args.codes, pepper=args.pepper,
                              seed=args.seed, processes=args.processes, operation=args.operation,
                              strategy=args.strategy, isolation=args.isolation,
                              retry_serialization=args.retry_serialization, nemesis=args.nemesis,
                              progress=advance, timeout_s=args.timeout)
        except RaceInterrupted as stopped:
            report, interrupted = stopped.report, True
    status = "interrupted" if interrupted else verdict(report, min_raced=args.min_raced)
    doc = summarise(report, status)
    try:
        print(json.dumps(doc, indent=2, default=str) if args.format == "json" else _table(doc))
    except BrokenPipeError:  # `harness race | head`: the verdict still decides the exit status
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if interrupted:
        print("harness: interrupted: the report above is partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status == "pass" else 1
