"""The checkers stream over big histories; here they must agree with the definitions, written plainly.

``single_winner`` and ``overlap`` make one pass in the order ``History.iter_pairs`` yields
(completions in time order, the never-completed last) and keep a few numbers per key. The
reference below builds every (invoke, completion) pair and applies the definitions directly;
hypothesis draws histories with interleaved racers, lost completions, duplicate stamps, several
token sets per key, and ops the ``select`` filter drops.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness import checkers
from harness.history import History, Op, OpInterner, op_fields


def _reference_pairs(ops: list[Op]) -> list[tuple[Op, Op | None]]:
    """Per process, each invoke with the next completion of that process, in time order."""
    out: list[tuple[Op, Op | None]] = []
    open_ops: dict[Any, Op] = {}
    for op in sorted(ops, key=lambda o: o.time):
        if op.type == "invoke":
            if op.process in open_ops:  # superseded: never completed
                out.append((open_ops[op.process], None))
            open_ops[op.process] = op
        elif op.process in open_ops:
            out.append((open_ops.pop(op.process), op))
    out.extend((inv, None) for inv in open_ops.values())
    return out


def _reference(ops: list[Op]) -> tuple[dict[str, Any], dict[str, Any]]:
    wins: dict[Any, list[Any]] = defaultdict(list)
    tokens: dict[Any, set[Any]] = defaultdict(set)
    kinds: dict[Any, list[str]] = defaultdict(list)
    spans: dict[Any, list[tuple[int, int | None]]] = defaultdict(list)
    for inv, done in _reference_pairs(ops):
        k = inv.value["code"]
        outcome = done.type if done else "info"
        kinds[k].append(outcome)
        spans[k].append((inv.time, done.time if done else None))
        if outcome == "ok" and done is not None:
            wins[k].append(inv.process)
            tokens[k].add(done.value.get("token") or f"#{inv.process}")
    double = sum(1 for k in kinds if (len(tokens[k]) or len(wins[k])) > 1)
    no_winner = sum(1 for k in kinds if not wins[k] and "info" not in kinds[k])
    winners = {"keys": len(kinds), "attempts": sum(map(len, kinds.values())),
               "wins": sum(map(len, wins.values())), "double_wins": double, "no_winner": no_winner,
               "losses": sum(v.count("fail") for v in kinds.values()),
               "indeterminate": sum(v.count("info") for v in kinds.values())}
    in_flight = {}
    for k, s in spans.items():
        ends = [b for _, b in s if b is not None]
        first_end = min(ends) if ends else None
        in_flight[k] = sum(1 for a, _ in s if first_end is None or a < first_end)
    spread = sorted((max(a for a, _ in s) - min(a for a, _ in s)) / 1000 for s in spans.values())
    overlap = {"keys": len(spans), "keys_raced": sum(1 for v in in_flight.values() if v >= 2),
               "keys_all_in_flight": sum(1 for k, v in in_flight.items() if v == len(spans[k])),
               "max_in_flight": max(in_flight.values(), default=0),
               "median_spread_us": spread[len(spread) // 2] if spread else None}
    return winners, overlap


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    """Racers attempting codes; an attempt is ok (with a token), fail, or never completes."""
    ops: list[Op] = []
    for process in range(draw(st.integers(1, 5))):
        t = draw(st.integers(0, 20))
        for code in draw(st.lists(st.integers(0, 3), max_size=4)):
            retry = draw(st.integers(0, 1))  # a retry after 40001: dropped by ``select`` below
            value = {"code": code, "attempt": retry}
            ops.append(Op(process, "invoke", "exchange", value, t))
            t += draw(st.integers(0, 6))  # 0: equal stamps happen
            outcome = draw(st.sampled_from(["ok", "fail", "none"]))
            if outcome == "ok":
                token = draw(st.sampled_from(["t1", "t2", None]))
                ops.append(Op(process, "ok", "exchange", {**value, "token": token} if token else value, t))
            elif outcome == "fail":
                ops.append(Op(process, "fail", "exchange", value, t, "conflict: used"))
            t += draw(st.integers(0, 3))
    return draw(st.permutations(ops))  # racers' batches arrive in any order


@settings(max_examples=300, deadline=None)
@given(histories())
def test_streaming_checkers_agree_with_the_definitions(ops: list[Op]) -> None:
    interner = OpInterner()  # as the race's parent rebuilds what racers send
    history = History([interner.op(op_fields(op)) for op in ops])
    winners = checkers.single_winner(history)
    overlap = checkers.overlap(history)
    want_winners, want_overlap = _reference(ops)
    assert {k: winners.summary[k] for k in want_winners} == want_winners
    assert {k: overlap.summary[k] for k in want_overlap} == want_overlap
    assert winners.valid == (want_winners["double_wins"] == 0 and want_winners["no_winner"] == 0)
    # Filtered while pairing: the same as a history that never held the retries.
    first = [op for op in ops if op.value["attempt"] == 0]
    selected = checkers.overlap(history, select=lambda op: op.value["attempt"] == 0)
    assert {k: selected.summary[k] for k in want_overlap} == _reference(first)[1]
