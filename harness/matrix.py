"""The isolation matrix: claim strategies × isolation levels, each cell a multi-process race."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from harness.database import Database
from harness.race import MIN_RACED_FRACTION, race, verdict
from harness.sut.claims import Isolation, Strategy

COLUMNS = [
    "strategy", "isolation", "double_wins", "no_winner", "serialization_failures",
    "serialization_per_code", "indeterminate", "wins", "attempts", "attempts_per_s",
    "codes_per_s", "raced_fraction", "retry_serialization", "verdict",
]


def isolation_matrix(
    db: Database,
    *,
    racers: int = 16,
    codes: int = 200,
    pepper: str | None = None,
    target: str = "faithful",
    strategies: Iterable[Strategy | str] = tuple(Strategy),
    isolations: Iterable[Isolation | str] = tuple(Isolation),
    retry_serialization: int = 0,
    processes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per (strategy, isolation): ``racers`` racers × ``codes`` fresh codes on the claim.

    Each cell races ``validate_authorization_code`` (the claim and its checks)
    on ``target`` with its claim strategy and isolation overridden. Columns:
    double-won codes, codes with no winner (every racer refused, e.g. all got
    SQLSTATE 40001), serialization failures (40001, a definite loss) in total
    and per code, indeterminate attempts, throughput, the share of codes whose
    racers overlapped, and the cell's race verdict. With ``retry_serialization``
    a racer that got 40001 tries again (as a real client would), up to that
    many times.
    """
    rows: list[dict[str, Any]] = []
    for strategy in map(Strategy, strategies):
        for isolation in map(Isolation, isolations):
            report = race(db, target, racers=racers, codes=codes, pepper=pepper,
                          processes=processes, operation="validate", strategy=strategy.value,
                          isolation=isolation.value, retry_serialization=retry_serialization)
            s, w = report.stats, report.winners.summary
            rows.append({
                "strategy": strategy.value,
                "isolation": isolation.value,
                "double_wins": w["double_wins"],
                "no_winner": w["no_winner"],
                "serialization_failures": s["serialization_failures"],
                "serialization_per_code": round(s["serialization_failures"] / codes, 2),
                "indeterminate": s["ops"]["info"],
                "wins": w["wins"],
                "attempts": s["ops"]["invoke"],
                "attempts_per_s": round(s["attempts_per_s"]),
                "codes_per_s": round(s["codes_per_s"]),
                "raced_fraction": round(report.overlap.summary["raced_fraction"], 3),
                "retry_serialization": retry_serialization,
                "verdict": verdict(report),
            })
            if progress is not None:
                progress(f"{strategy.value} @ {isolation.value}")
    return pd.DataFrame(rows, columns=COLUMNS)


def judge(matrix: pd.DataFrame) -> list[str]:
    """What is wrong with a measured matrix; empty when it shows what it must.

    The correct strategies (atomic, for_update) must never double-win nor
    leave a code without a winner; the negative control (naive at READ
    COMMITTED) must be caught double-winning, or the matrix proves nothing;
    and every cell must have raced.
    """
    problems: list[str] = []
    control_caught: bool | None = None
    for row in matrix.to_dict(orient="records"):
        cell = f"{row['strategy']} @ {row['isolation']}"
        sound = row["strategy"] != Strategy.NAIVE.value
        if sound and int(row["double_wins"]):
            problems.append(f"{cell}: {row['double_wins']} double-won codes")
        if sound and int(row["no_winner"]):
            problems.append(f"{cell}: {row['no_winner']} codes without a winner")
        if float(row["raced_fraction"]) < MIN_RACED_FRACTION:
            problems.append(f"{cell}: only {float(row['raced_fraction']):.0%} of codes raced")
        if not sound and row["isolation"] == Isolation.READ_COMMITTED.value:
            control_caught = int(row["double_wins"]) > 0
    if control_caught is False:
        problems.append("naive @ read_committed was not caught double-winning: "
                        "the race cannot tell a broken claim from a sound one")
    return problems
