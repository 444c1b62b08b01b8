"""Pure checkers over histories: a history in, a result with evidence rows out."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from harness.history import History


@dataclass(frozen=True)
class Result:
    """``valid`` is the verdict; ``summary`` the counts; ``evidence`` the rows that show it."""

    valid: bool
    summary: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)


def _outcomes_by_key(history: History, f: str, key: str) -> dict[Any, dict[str, list[Any]]]:
    """Per key: the processes of each outcome, and under ``"tokens"`` the token sets the wins got."""
    by_key: dict[Any, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for inv, done in history.pairs():
        if inv.f != f or not isinstance(inv.value, dict) or key not in inv.value:
            continue
        outcome = done.type if done else "info"
        by_key[inv.value[key]][outcome].append(inv.process)
        if done is not None and outcome == "ok" and isinstance(done.value, dict):
            by_key[inv.value[key]]["tokens"].append(done.value.get("token") or f"#{inv.process}")
    return by_key


def single_winner(
    history: History, *, f: str = "exchange", key: str = "code", require_winner: bool = True
) -> Result:
    """Every ``key`` is won (``ok``) at most once, and, with ``require_winner``, at least once.

    Wins are counted as distinct token sets when the ok ops say which they got
    (``value["token"]``, a fingerprint): a server that hands the same pair to
    several racers issued it once. An indeterminate (``info``) attempt may
    have won: a key with one win and some ``info`` is still valid; a key with
    no ``ok`` but some ``info`` is not counted as "no winner" (nobody can
    know), it is reported apart.
    """
    by_key = _outcomes_by_key(history, f, key)
    evidence: list[dict[str, Any]] = []
    double = no_winner = indeterminate = 0
    for k, outcomes in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        wins = outcomes.get("ok", [])
        infos = outcomes.get("info", [])
        distinct = len(set(outcomes.get("tokens", []))) or len(wins)
        if distinct > 1:
            double += 1
            evidence.append({key: k, "problem": "won more than once", "wins": distinct,
                             "winners": sorted(map(str, wins))})
        elif not wins and infos:
            indeterminate += 1
        elif not wins and require_winner:
            no_winner += 1
            evidence.append({key: k, "problem": "no winner", "wins": 0, "winners": []})
    summary = {
        "keys": len(by_key),
        "attempts": sum(sum(len(v) for n, v in o.items() if n != "tokens") for o in by_key.values()),
        "wins": sum(len(o.get("ok", [])) for o in by_key.values()),
        "distinct_token_sets": sum(len(set(o.get("tokens", []))) for o in by_key.values()),
        "losses": sum(len(o.get("fail", [])) for o in by_key.values()),
        "indeterminate": sum(len(o.get("info", [])) for o in by_key.values()),
        "double_wins": double,
        "no_winner": no_winner,
        "keys_indeterminate": indeterminate,
    }
    return Result(valid=double == 0 and no_winner == 0, summary=summary, evidence=evidence)


def overlap(history: History, *, f: str = "exchange", key: str = "code") -> Result:
    """Did the racers of each key really race? Valid when every key had ≥ 2 attempts in flight at once.

    Per key: ``spread_us`` (last start − first start), ``in_flight`` (attempts
    started before the first one returned) and ``all_in_flight`` (every
    attempt started before the first one returned).
    """
    spans: dict[Any, list[tuple[int, int | None]]] = defaultdict(list)
    for inv, done in history.pairs():
        if inv.f == f and isinstance(inv.value, dict) and key in inv.value:
            spans[inv.value[key]].append((inv.time, done.time if done else None))
    rows = []
    for k, s in spans.items():
        starts = sorted(a for a, _ in s)
        ends = [b for _, b in s if b is not None]
        first_end = min(ends) if ends else None
        in_flight = sum(1 for a in starts if first_end is None or a < first_end)
        rows.append({key: k, "attempts": len(s), "spread_us": (starts[-1] - starts[0]) / 1000,
                     "in_flight": in_flight, "all_in_flight": in_flight == len(s)})
    raced = sum(1 for r in rows if r["in_flight"] >= 2)
    all_in = sum(1 for r in rows if r["all_in_flight"])
    spreads = sorted(r["spread_us"] for r in rows)
    summary = {
        "keys": len(rows),
        "keys_raced": raced,
        "keys_all_in_flight": all_in,
        "raced_fraction": raced / len(rows) if rows else 0.0,
        "median_spread_us": spreads[len(spreads) // 2] if spreads else None,
        "max_in_flight": max((r["in_flight"] for r in rows), default=0),
    }
    not_raced = [r for r in rows if r["in_flight"] < 2]
    return Result(valid=bool(rows) and not not_raced, summary=summary, evidence=not_raced)
