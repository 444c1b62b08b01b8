"""``harness race`` as a subprocess and the multi-process race driver behind it (real PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from harness.checkers import overlap, single_winner
from harness.database import Database
from harness.history import History, Op
from harness.race import RaceReport, RaceSpec, race, race_code, race_processes, seed_codes, verdict
from harness.targets import load_target

HARNESS = [sys.executable, "-m", "harness"]


def harness(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET")}
    env["HARNESS_DATABASE_URL"] = url
    env["HARNESS_AT_REST_PEPPER"] = "race-cli-pepper"
    return subprocess.run([*HARNESS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def as_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_faithful_passes_with_measured_overlap(database: Database) -> None:
    done = harness("race", "--target", "faithful", "--racers", "8", "--codes", "60",
                   "--format", "json", url=database.url)
    assert done.returncode == 0, done.stderr
    doc = as_json(done)
    assert doc["verdict"] == "pass"
    assert doc["processes"] > 1  # racers ran in several OS processes
    ov = doc["overlap"]
    assert ov["keys"] == 60 and ov["keys_raced"] > 0 and ov["raced_fraction"] >= 0.9
    assert ov["max_in_flight"] >= 2
    ops = doc["ops"]
    assert ops["invoke"] == 8 * 60 == ops["ok"] + ops["fail"] + ops["info"]
    assert ops["ok"] == 60 and doc["single_winner"]["double_wins"] == 0
    assert doc["attempts_per_s"] > 0 and doc["codes_per_s"] > 0
    assert doc["double_won"] == [] and doc["no_winner"] == []
    # Where the time went: every racer process reported its CPU, and the server (on this
    # machine, found through a backend's parent) its own.
    cpu = doc["cpu"]
    assert cpu["racers_s"] > 0 and cpu["parent_s"] > 0 and cpu["client_us_per_attempt"] > 0
    assert cpu["server_s"] > 0 and cpu["server_us_per_attempt"] > 0


def test_naive_fails_and_lists_the_double_won_codes(database: Database) -> None:
    seed = "naive-cli-seed"
    done = harness("race", "--target", "naive", "--racers", "8", "--codes", "30",
                   "--seed", seed, url=database.url)
    assert done.returncode == 1, done.stderr
    assert "verdict      DOUBLE WIN" in done.stdout
    listed = re.findall(r"^  #(\d+)\s+([0-9a-f]{12})…\s+(\d+)$", done.stdout, re.MULTILINE)
    assert listed, done.stdout
    assert all(int(wins) >= 2 for _, _, wins in listed)
    # Digests identify the codes; the raw codes (secrets) never reach the output.
    for index, _, _ in listed:
        assert race_code(seed, int(index)) not in done.stdout + done.stderr
    assert "race:" in done.stderr  # the progress bar went to stderr


def test_naive_json_names_every_double_won_code(database: Database) -> None:
    done = harness("race", "--target", "naive", "--racers", "6", "--codes", "20",
                   "--format", "json", "--no-progress", url=database.url)
    assert done.returncode == 1
    doc = as_json(done)
    assert doc["verdict"] == "double win"
    assert len(doc["double_won"]) == doc["single_winner"]["double_wins"] > 0
    assert all(set(r) == {"code", "digest", "wins"} for r in doc["double_won"])
    assert done.stderr == ""


def test_strategy_and_isolation_override_the_targets_claim(database: Database) -> None:
    broken = harness("race", "--target", "faithful", "--strategy", "naive", "--racers", "6",
                     "--codes", "20", "--format", "json", "--no-progress", url=database.url)
    assert broken.returncode == 1
    assert as_json(broken)["strategy"] == "naive"
    fixed = harness("race", "--target", "naive", "--isolation", "serializable",
                    "--operation", "validate", "--racers", "6", "--codes", "20",
                    "--format", "json", "--no-progress", url=database.url)
    doc = as_json(fixed)
    assert (doc["strategy"], doc["isolation"]) == ("naive", "serializable")
    assert doc["single_winner"]["double_wins"] == 0
    assert doc["serialization_failures"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "no-such-target"], "unknown target"),
    (["--racers", "1"], "at least 2 racers"),
    (["--racers", "0"], "must be at least 1"),
    (["--strategy", "optimistic"], "invalid choice"),
    (["--nemesis", "restart"], "needs the embedded server"),
])
def test_usage_and_setup_errors_exit_2(database: Database, args: list[str], message: str) -> None:
    done = harness("race", "--codes", "2", "--no-progress", *args, url=database.url)
    assert done.returncode == 2
    assert message in done.stderr


def test_unreachable_database_exits_2() -> None:
    done = harness("race", "--codes", "2", url="postgresql://nobody@127.0.0.1:1/none",
                   timeout=30)
    assert done.returncode == 2
    assert "cannot reach PostgreSQL" in done.stderr


def test_processes_merge_into_one_history(db: Database, pepper: str) -> None:
    target = load_target("faithful", db, pepper=pepper)
    seed_codes(target, "merge", 25)
    spec = RaceSpec(url=db.url, target="faithful", pepper=pepper, seed="merge", codes=25,
                    racers=6, operation="validate")
    report = race_processes(spec, processes=3)
    assert report.stats["processes"] == 3
    assert {op.process for op in report.history.ops} == set(range(6))
    assert len(report.history) == 2 * 6 * 25
    assert report.winners.valid and report.winners.summary["wins"] == 25
    assert report.overlap.summary["keys_raced"] == 25


def test_a_run_where_nothing_raced_never_passes() -> None:
    # Two attempts per code, one after the other: no double win, but no race either.
    history = History()
    t = 0
    for code in range(5):
        for process, outcome in ((0, "ok"), (1, "fail")):
            history.append(Op(process, "invoke", "exchange", {"code": code}, t))
            history.append(Op(process, outcome, "exchange", {"code": code}, t + 10))  # type: ignore[arg-type]
            t += 100
    report = RaceReport(history, single_winner(history), overlap(history), {"incomplete": False})
    assert report.winners.valid
    assert report.overlap.summary["keys_raced"] == 0
    assert verdict(report) == "no race"


def test_race_api_reports_throughput_and_settings(db: Database, pepper: str) -> None:
    report = race(db, "naive", racers=4, codes=10, pepper=pepper, strategy="atomic")
    assert verdict(report) == "pass"
    assert report.stats["strategy"] == "atomic" and report.stats["isolation"] == "read_committed"
    assert report.stats["attempts_per_s"] > 0
