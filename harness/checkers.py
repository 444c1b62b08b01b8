"""Pure checkers over histories: a history in, a result with evidence rows out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.history import History, Op


@dataclass(frozen=True)
class Result:
    """``valid`` is the verdict; ``summary`` the counts; ``evidence`` the rows that show it."""

    valid: bool
    summary: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)


class _Outcomes:
    """One key's attempts: who won, what the wins got, how many lost or are unknown."""

    __slots__ = ("fails", "infos", "tokens", "wins")

    def __init__(self) -> None:
        self.wins: list[Any] = []
        self.tokens: list[Any] = []
        self.fails = 0
        self.infos = 0

    @property
    def attempts(self) -> int:
        return len(self.wins) + self.fails + self.infos


def _outcomes_by_key(history: History, f: str, key: str) -> dict[Any, _Outcomes]:
    """Per key: the winning processes, the token sets the wins got, and counts of the others.

    Losers are only counted: a race of 64 racers x 10,000 codes has 630,000 of them.
    """
    by_key: dict[Any, _Outcomes] = {}
    for inv, done in history.iter_pairs():
        value = inv.value
        if inv.f != f or not isinstance(value, dict) or key not in value:
            continue
        k = value[key]
        o = by_key.get(k)
        if o is None:
            o = by_key[k] = _Outcomes()
        outcome = done.type if done else "info"
        if outcome == "ok":
            o.wins.append(inv.process)
            if done is not None and isinstance(done.value, dict):
                o.tokens.append(done.value.get("token") or f"#{inv.process}")
        elif outcome == "fail":
            o.fails += 1
        else:
            o.infos += 1
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
    attempts = wins_total = token_sets = losses = infos = 0
    for k, o in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        distinct_tokens = len(set(o.tokens))
        distinct = distinct_tokens or len(o.wins)
        attempts += o.attempts
        wins_total += len(o.wins)
        token_sets += distinct_tokens
        losses += o.fails
        infos += o.infos
        if distinct > 1:
            double += 1
            evidence.append({key: k, "problem": "won more than once", "wins": distinct,
                             "winners": sorted(map(str, o.wins))})
        elif not o.wins and o.infos:
            indeterminate += 1
        elif not o.wins and require_winner:
            no_winner += 1
            evidence.append({key: k, "problem": "no winner", "wins": 0, "winners": []})
    summary = {
        "keys": len(by_key),
        "attempts": attempts,
        "wins": wins_total,
        "distinct_token_sets": token_sets,
        "losses": losses,
        "indeterminate": infos,
        "double_wins": double,
        "no_winner": no_winner,
        "keys_indeterminate": indeterminate,
    }
    return Result(valid=double == 0 and no_winner == 0, summary=summary, evidence=evidence)


def overlap(
    history: History, *, f: str = "exchange", key: str = "code",
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Did the racers of each key really race? Valid when every key had ≥ 2 attempts in flight at once.

    Per key: ``spread_us`` (last start − first start), ``in_flight`` (attempts
    started before the first one returned) and ``all_in_flight`` (every
    attempt started before the first one returned). ``select`` keeps only the
    ops it accepts (e.g. not the retries), as if the history held no others.

    One pass, a few numbers per key: ``History.iter_pairs`` yields operations
    in the order of their completions (the never-completed last), so the first
    pair seen of a key holds its first completion, before any start is counted.
    """
    # Per key: [attempts, first start, last start, first end (None: none returned), in flight]
    spans: dict[Any, list[Any]] = {}
    for inv, done in history.iter_pairs(select):
        value = inv.value
        if inv.f != f or not isinstance(value, dict) or key not in value:
            continue
        start = inv.time
        s = spans.get(value[key])
        if s is None:
            s = spans[value[key]] = [0, start, start, done.time if done else None, 0]
        s[0] += 1
        if start < s[1]:
            s[1] = start
        elif start > s[2]:
            s[2] = start
        if s[3] is None or start < s[3]:
            s[4] += 1
    raced = all_in = max_in_flight = 0
    spreads: list[float] = []
    not_raced: list[dict[str, Any]] = []
    for k, (attempts, first, last, _, in_flight) in spans.items():
        spread_us = (last - first) / 1000
        spreads.append(spread_us)
        raced += in_flight >= 2
        all_in += in_flight == attempts
        max_in_flight = max(max_in_flight, in_flight)
        if in_flight < 2:
            not_raced.append({key: k, "attempts": attempts, "spread_us": spread_us,
                              "in_flight": in_flight, "all_in_flight": in_flight == attempts})
    spreads.sort()
    summary = {
        "keys": len(spans),
        "keys_raced": raced,
        "keys_all_in_flight": all_in,
        "raced_fraction": raced / len(spans) if spans else 0.0,
        "median_spread_us": spreads[len(spreads) // 2] if spreads else None,
        "max_in_flight": max_in_flight,
    }
    return Result(valid=bool(spans) and not not_raced, summary=summary, evidence=not_raced)
