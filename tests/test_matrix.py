"""The isolation matrix: every strategy × isolation level raced for real; the naive control must be caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from harness.database import Database
from harness.matrix import COLUMNS, isolation_matrix, judge


@pytest.mark.slow
def test_matrix_catches_naive_at_read_committed_and_nothing_else(db: Database, pepper: str) -> None:
    frame = isolation_matrix(db, racers=8, codes=25, pepper=pepper)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 9
    cell = frame.set_index(["strategy", "isolation"])
    # The check fails on the negative control ...
    assert cell.loc[("naive", "read_committed"), "double_wins"] > 0
    # ... and holds for the sound claims at every level.
    for strategy in ("atomic", "for_update"):
        assert (cell.loc[strategy, "double_wins"] == 0).all()
        assert (cell.loc[strategy, "no_winner"] == 0).all()
    # Inside REPEATABLE READ / SERIALIZABLE transactions the naive claim loses its
    # race to 40001 instead of double-winning.
    for level in ("repeatable_read", "serializable"):
        assert cell.loc[("naive", level), "double_wins"] == 0
    assert cell.loc["naive", "serialization_failures"].sum() > 0
    # READ COMMITTED never raises 40001.
    assert (frame[frame.isolation == "read_committed"].serialization_failures == 0).all()
    assert (frame.raced_fraction >= 0.9).all()
    assert (frame.attempts == 8 * 25).all() and (frame.attempts_per_s > 0).all()
    assert judge(frame) == []


def test_retrying_40001_gives_every_code_a_winner(db: Database, pepper: str) -> None:
    once = isolation_matrix(db, racers=8, codes=15, pepper=pepper, strategies=["naive"],
                            isolations=["serializable"])
    retried = isolation_matrix(db, racers=8, codes=15, pepper=pepper, strategies=["naive"],
                               isolations=["serializable"], retry_serialization=20)
    assert int(once.serialization_failures.iloc[0]) > 0
    row = retried.iloc[0]
    assert row.double_wins == 0 and row.no_winner == 0 and row.wins == 15
    assert row.retry_serialization == 20
    # A retry is one more attempt: the retried run made more attempts than racers × codes.
    assert row.attempts > 8 * 15 or row.serialization_failures == 0


def test_judge_reports_a_sound_strategy_that_double_wins_and_an_uncaught_control() -> None:
    base = {c: 0 for c in COLUMNS} | {"raced_fraction": 1.0, "verdict": "pass"}
    frame = pd.DataFrame([
        base | {"strategy": "atomic", "isolation": "read_committed", "double_wins": 3},
        base | {"strategy": "naive", "isolation": "read_committed", "double_wins": 0},
        base | {"strategy": "for_update", "isolation": "serializable", "raced_fraction": 0.2},
    ])
    problems = judge(frame)
    assert any("atomic @ read_committed: 3 double-won" in p for p in problems)
    assert any("naive @ read_committed was not caught" in p for p in problems)
    assert any("for_update @ serializable: only 20%" in p for p in problems)


def test_matrix_cli_json(database: Database) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="matrix-pepper")
    done = subprocess.run(
        [sys.executable, "-m", "harness", "matrix", "--racers", "6", "--codes", "12",
         "--strategy", "naive", "--strategy", "atomic", "--isolation", "read_committed",
         "--format", "json", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    cells = {(c["strategy"], c["isolation"]): c for c in doc["cells"]}
    assert set(cells) == {("naive", "read_committed"), ("atomic", "read_committed")}
    assert cells[("naive", "read_committed")]["double_wins"] > 0
    assert cells[("atomic", "read_committed")]["double_wins"] == 0
    assert doc["problems"] == []
