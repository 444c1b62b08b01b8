"""The nemesis: races through terminated backends, a paused and a restarted server; nothing is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.database import Database
from harness.errors import SetupError
from harness.nemesis import Nemesis
from harness.race import RaceReport, race, verdict


def accounted(report: RaceReport) -> None:
    """Every racer invoke has exactly one ok / fail / info, and no code was won twice."""
    ops = report.stats["ops"]
    assert ops["invoke"] == ops["ok"] + ops["fail"] + ops["info"] > 0
    pairs = [(inv, done) for inv, done in report.history.pairs() if inv.process != "nemesis"]
    assert all(done is not None for _, done in pairs)
    assert report.winners.summary["double_wins"] == 0
    assert report.winners.summary["no_winner"] == 0
    assert not report.stats["errors"] and not report.stats["incomplete"]
    faults = [op for op in report.history.ops if op.process == "nemesis"]
    nemesis = report.stats["nemesis"]
    assert faults and len(faults) == 2 * (nemesis["injected"] + nemesis["failed"])


def needs_embedded(db: Database) -> None:
    if db.embedded is None:
        pytest.skip("pause/restart signal the server process: embedded server only "
                    "(HARNESS_DATABASE_URL is set)")


def test_terminated_backends_become_indeterminate_ops(db: Database, pepper: str) -> None:
    report = race(db, "faithful", racers=8, codes=250, pepper=pepper, nemesis="terminate")
    accounted(report)
    nemesis = report.stats["nemesis"]
    assert nemesis["injected"] >= 1 and nemesis["terminated_backends"] >= 1
    assert report.stats["ops"]["info"] >= 1  # lost connections are recorded, as info
    assert all((op.error or "").startswith("indeterminate")
               for op in report.history.ops if op.type == "info" and op.process != "nemesis")
    # Killed connections may leave some codes with a lone attempt ("no race" below the 90 %
    # bar), but the racers must still have raced: most codes had two attempts in flight.
    assert verdict(report) in ("pass", "no race")
    assert report.overlap.summary["raced_fraction"] >= 0.5, report.overlap.summary


@pytest.mark.slow
def test_pause_stalls_the_racers_without_losing_or_hanging(db: Database, pepper: str) -> None:
    needs_embedded(db)
    report = race(db, "faithful", racers=8, codes=250, pepper=pepper, nemesis="pause",
                  timeout_s=120)
    accounted(report)
    assert report.stats["nemesis"]["failed"] == 0


@pytest.mark.slow
def test_restart_mid_race_keeps_the_invariant(db: Database, pepper: str) -> None:
    needs_embedded(db)
    report = race(db, "faithful", racers=8, codes=300, pepper=pepper, nemesis="restart",
                  timeout_s=120)
    accounted(report)
    assert report.stats["nemesis"]["failed"] == 0
    # The caller's own pools were healed: the session database works after the restart.
    db.ensure_party("after-restart", "after-restart")


def test_restart_and_pause_refuse_a_server_given_by_url(db: Database) -> None:
    by_url = Database(db.url)
    for fault in ("restart", "pause"):
        with pytest.raises(SetupError, match="needs the embedded server"):
            Nemesis(by_url, fault, "harness-race-x")
    with pytest.raises(SetupError, match="unknown nemesis"):
        Nemesis(by_url, "flood", "harness-race-x")


def test_cli_nemesis_terminate_reports_every_op(database: Database) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="nemesis-pepper")
    done = subprocess.run([sys.executable, "-m", "harness", "race", "--racers", "8", "--codes",
                           "200", "--nemesis", "terminate", "--format", "json", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=180)
    doc = json.loads(done.stdout)
    ops = doc["ops"]
    assert ops["invoke"] == ops["ok"] + ops["fail"] + ops["info"] == 8 * 200
    assert doc["single_winner"]["double_wins"] == 0
    assert doc["nemesis"]["fault"] == "terminate" and doc["nemesis"]["injected"] >= 1
    assert done.returncode == (0 if doc["verdict"] == "pass" else 1)
