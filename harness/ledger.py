"""The load ledger: a Locust run's wins and attempts in ``harness_ledger*`` tables, and a pure checker.

A win over HTTP (``load/locustfile.py --endpoint``) also says which token set
it got: the fingerprint of its access token (``harness.redact.fingerprint``),
kept in the attempt row's ``detail`` as ``token sha256:…``. A server that
answers several racers with the same pair issued it once, so the checker
counts distinct token sets per code, not 200s.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg

from harness.at_rest import hash_at_rest
from harness.checkers import Result, overlap, single_winner
from harness.errors import RemoteOAuthError, from_wire
from harness.history import History, Op
from harness.redact import fingerprint

Outcome = Literal["won", "lost", "error"]
#: A Locust outcome as a Jepsen completion: a lost exchange definitely did not happen; an
#: error (lost connection, 500) may have, so it is indeterminate.
OP_TYPE: dict[str, Literal["ok", "fail", "info"]] = {"won": "ok", "lost": "fail", "error": "info"}
#: Exit statuses of a judged run (the CLI's convention): 0 holds, 1 violated, 2 nothing raced.
EXIT_HOLDS, EXIT_VIOLATED, EXIT_INCONCLUSIVE = 0, 1, 2


@dataclass(frozen=True)
class Win:
    """One ``harness_ledger`` row: ``winner`` won code ``code_index`` (times: ``time.time_ns()``)."""

    code_index: int
    code_hash: str
    winner: str
    started_ns: int
    finished_ns: int


@dataclass(frozen=True)
class Attempt:
    """One ``harness_ledger_attempts`` row: an exchange by ``racer`` in Locust process ``worker``."""

    worker: str
    racer: str
    code_index: int
    outcome: Outcome
    started_ns: int
    finished_ns: int
    detail: str | None = None
    #: Over HTTP, the fingerprint of the token set a win got (``sha256:…``, never a raw token).
    token: str | None = None


#: How a token fingerprint is kept in ``harness_ledger_attempts.detail``: the schema has no column
#: for it, and ``detail`` is free text that a win otherwise leaves empty.
TOKEN_TAG = "token "
_DETAIL_SEPARATOR = "; "


def pack_detail(detail: str | None, token: str | None) -> str | None:
    """``detail`` as stored: ``token sha256:…`` first when there is a token, then the detail."""
    if token is None:
        return detail
    return TOKEN_TAG + token + (_DETAIL_SEPARATOR + detail if detail else "")


def unpack_detail(stored: str | None) -> tuple[str | None, str | None]:
    """(detail, token) of a stored ``detail`` (the inverse of :func:`pack_detail`)."""
    if stored is None or not stored.startswith(TOKEN_TAG):
        return stored, None
    token, _, detail = stored[len(TOKEN_TAG):].partition(_DETAIL_SEPARATOR)
    return detail or None, token or None


def token_outcome(status: int, text: str | None) -> tuple[Outcome, str | None, str | None]:
    """(outcome, detail, token fingerprint) of a token endpoint's answer to an exchange (``status`` > 0).

    200 with an access token: won, and which token set (its fingerprint, never the token).
    An RFC 6749 §5.2 refusal (``harness.errors.from_wire`` gives ``RemoteOAuthError``): lost, the
    exchange definitely did not happen. A 5xx, an unreadable body or a 200 without a token:
    error, indeterminate (the server may have issued tokens it never handed over).
    """
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = None
    if status == 200:
        token = body.get("access_token") if isinstance(body, dict) else None
        if isinstance(token, str) and token:
            return "won", None, fingerprint(token)
        return "error", "HTTP 200 without an access_token", None
    refusal = from_wire(status, body)
    if isinstance(refusal, RemoteOAuthError):
        return "lost", refusal.detail, None
    return "error", refusal.detail, None


def code_digest(code: str, pepper: str | bytes | None) -> str:
    """The code's at-rest digest: the very value of ``oauth_auth_codes.code``, so the two tables join."""
    return hash_at_rest(code, pepper)


# -- writing ------------------------------------------------------------------------------------


_INSERT_ATTEMPT = (
    "INSERT INTO harness_ledger_attempts (run_id, worker, racer, code_index, outcome, started_ns, "
    "finished_ns, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def _attempt_row(run_id: str, a: Attempt) -> tuple[object, ...]:
    return (run_id, a.worker, a.racer, a.code_index, a.outcome, a.started_ns, a.finished_ns,
            pack_detail(a.detail, a.token))


def record_win(conn: psycopg.Connection[Any], run_id: str, win: Win, attempt: Attempt | None = None
               ) -> None:
    """Write one win at once (not batched): a win must survive its process being killed next.

    With ``attempt`` (the win's own attempt row, carrying its token), both rows go in one
    transaction: the ``harness_ledger`` table has no column for the token, and a win whose
    token were known only from a batch still unflushed when its worker died could not be told
    apart from its rivals' (the checker would have to count it as a token set of its own).
    """
    insert_win = (
        "INSERT INTO harness_ledger (run_id, code_index, code_hash, winner, started_ns, finished_ns) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )
    row = (run_id, win.code_index, win.code_hash, win.winner, win.started_ns, win.finished_ns)
    if attempt is None:
        conn.execute(insert_win, row)  # one statement: no BEGIN/COMMIT round trips on the hot path
        return
    with conn.transaction():
        conn.execute(insert_win, row)
        conn.execute(_INSERT_ATTEMPT, _attempt_row(run_id, attempt))


def write_attempts(conn: psycopg.Connection[Any], run_id: str, attempts: Iterable[Attempt]) -> int:
    """COPY a batch of attempts; return how many."""
    count = 0
    with conn.cursor() as cur, cur.copy(
        "COPY harness_ledger_attempts (run_id, worker, racer, code_index, outcome, started_ns, "
        "finished_ns, detail) FROM STDIN"
    ) as copy:
        for a in attempts:
            copy.write_row(_attempt_row(run_id, a))
            count += 1
    return count


def mark_worker(conn: psycopg.Connection[Any], run_id: str, worker: str, state: str,
                attempts: int = 0) -> None:
    """Record that a Locust process ``started`` a run or ``finished`` flushing it."""
    conn.execute(
        "INSERT INTO harness_ledger_workers (run_id, worker, state, attempts) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (run_id, worker) DO UPDATE SET state = EXCLUDED.state, "
        "attempts = EXCLUDED.attempts, updated_at = clock_timestamp()",
        (run_id, worker, state, attempts),
    )


# -- reading ------------------------------------------------------------------------------------


def worker_states(conn: psycopg.Connection[Any], run_id: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT worker, state FROM harness_ledger_workers WHERE run_id = %s", (run_id,)
    ).fetchall()
    return {str(w): str(s) for w, s in rows}


def read_run(conn: psycopg.Connection[Any], run_id: str) -> tuple[list[Win], list[Attempt]]:
    """The wins and the attempts of a run."""
    wins = [
        Win(int(i), str(h), str(w), int(s or 0), int(f or 0))
        for i, h, w, s, f in conn.execute(
            "SELECT code_index, code_hash, winner, started_ns, finished_ns FROM harness_ledger "
            "WHERE run_id = %s ORDER BY code_index, started_ns",
            (run_id,),
        )
    ]
    attempts = [
        Attempt(str(w), str(r), int(i), o, int(s), int(f), *unpack_detail(d))
        for w, r, i, o, s, f, d in conn.execute(
            "SELECT worker, racer, code_index, outcome, started_ns, finished_ns, detail "
            "FROM harness_ledger_attempts WHERE run_id = %s",
            (run_id,),
        )
    ]
    return wins, attempts


# -- judging (pure) -----------------------------------------------------------------------------


def to_history(attempts: Iterable[Attempt]) -> History:
    """The attempts as a Jepsen history (``exchange`` ops keyed by ``code``), one process per racer."""
    ops: list[Op] = []
    for a in attempts:
        process = f"{a.worker}/{a.racer}"
        value: dict[str, Any] = {"code": a.code_index}
        ops.append(Op(process, "invoke", "exchange", value, a.started_ns))
        # A win's token set (when known) in its completion, as ``harness.race.attempt`` records it:
        # ``single_winner`` then counts distinct token sets, not 200s.
        done = {**value, "token": a.token} if a.outcome == "won" and a.token else value
        ops.append(Op(process, OP_TYPE[a.outcome], "exchange", done, a.finished_ns, a.detail))
    return History(ops)


def won_by(wins: Iterable[Win], attempts: Iterable[Attempt]) -> dict[int, set[str]]:
    """Every win known from either source, per code: ``{code_index: {"worker/racer", …}}``.

    A win has two witnesses: its ``harness_ledger`` row (written at once) and the
    racer's own attempt row (batched). Either can be missing: the ledger write
    failed (the attempt row then says "won" with a detail), or the worker died
    before its last batch (the ledger row survives). Counting only one of them
    under-counts, and a missed win may be the second win of a code; a win seen
    by both is the same win, so each (code, racer) counts once.
    """
    winners: dict[int, set[str]] = defaultdict(set)
    for w in wins:
        winners[w.code_index].add(w.winner)
    for a in attempts:
        if a.outcome == "won":
            winners[a.code_index].add(f"{a.worker}/{a.racer}")
    return winners


def token_sets(wins: Iterable[Win], attempts: Iterable[Attempt]) -> dict[int, set[str]]:
    """The distinct token sets handed out per code: what "won" means to the checker.

    A win whose racer reported its token (over HTTP) counts as that token's
    fingerprint, so racers that got the same pair count once: the server
    issued it once. A win without a known token (a database race, or a win
    known only from the ledger) counts as a set of its own (``#worker/racer``).
    """
    token_of: dict[tuple[int, str], str] = {}
    for a in attempts:
        if a.outcome == "won" and a.token:
            token_of[(a.code_index, f"{a.worker}/{a.racer}")] = a.token
    return {i: {token_of.get((i, name), f"#{name}") for name in names}
            for i, names in won_by(wins, attempts).items()}


def check(wins: Sequence[Win], attempts: Sequence[Attempt], *, unfinished_workers: Sequence[str] = (),
          server_concurrency: int | None = None) -> Result:
    """Judge a run: no code won twice (by the ledger or by the racers' own outcomes), and a real race.

    ``valid`` is False on any double win: two distinct token sets for one code
    (:func:`token_sets`). ``summary["status"]`` is ``holds``, ``violated``, or
    ``inconclusive`` when no code had two attempts in flight at once or nobody
    won anything (such a run proves nothing), or when ``server_concurrency``
    (what an endpoint description declares) is 1: the racers overlapped on the
    wire, but a server that runs one request at a time serialises them, so a
    pass there would prove nothing (``summary["reason"]`` says which). Codes that nobody won
    are counted, not failed: a run stopped mid-exchange leaves such codes.
    ``summary["wins"]`` counts every win known from either source (:func:`won_by`), as distinct
    token sets per code; ``wins_missing_from_ledger`` says how many of them only the racers
    reported, and ``shared_token_wins`` how many racers got a token set another racer also got.
    """
    winners = won_by(wins, attempts)
    issued = token_sets(wins, attempts)
    in_ledger = {(w.code_index, w.winner) for w in wins}
    code_hash: dict[int, str] = {}
    for w in wins:
        code_hash.setdefault(w.code_index, w.code_hash)
    history = to_history(attempts)
    racers = single_winner(history, require_winner=True)
    raced = overlap(history)
    double_codes = {i for i, sets in issued.items() if len(sets) > 1}
    # The history checker over the racers' outcomes too: it reads the same rows, and two
    # independent readings must agree before a run is called a pass.
    double_codes |= {int(row["code"]) for row in racers.evidence if row["problem"] == "won more than once"}
    no_winner = sorted(
        int(row["code"]) for row in racers.evidence
        if row["problem"] == "no winner" and int(row["code"]) not in winners
    )
    outcomes: dict[str, int] = defaultdict(int)
    per_worker: dict[str, dict[str, int]] = defaultdict(lambda: {"attempts": 0, "wins": 0})
    for a in attempts:
        outcomes[a.outcome] += 1
        per_worker[a.worker]["attempts"] += 1
    for names in winners.values():
        for name in names:
            per_worker[name.rpartition("/")[0] or name]["wins"] += 1
    total_wins = sum(len(sets) for sets in issued.values())
    evidence = [
        {
            "code_index": i,
            "wins": len(issued.get(i, ())),
            "winners": sorted(winners.get(i, ())),
            "code_hash": code_hash.get(i),
        }
        for i in sorted(double_codes)
    ]
    codes_raced = int(raced.summary["keys_raced"])
    reason = None
    if double_codes:
        status = "violated"
    elif codes_raced == 0 or not total_wins:
        status = "inconclusive"
        reason = ("no code was both raced (two attempts in flight at once) and won; "
                  "nothing proven")
    elif server_concurrency is not None and server_concurrency <= 1:
        status = "inconclusive"
        reason = ("the server runs one request at a time (declared concurrency "
                  f"{server_concurrency}): the racers overlapped on the wire, never in the server")
    else:
        status = "holds"
    summary: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "server_concurrency": server_concurrency,
        "wins": total_wins,
        "shared_token_wins": sum(len(names) for names in winners.values()) - total_wins,
        "wins_missing_from_ledger": sum(
            1 for i, names in winners.items() for name in names if (i, name) not in in_ledger),
        "losses": outcomes["lost"],
        "errors": outcomes["error"],
        "attempts": len(attempts),
        "attempts_won": outcomes["won"],
        "codes": int(raced.summary["keys"]),
        "codes_won": len(winners),
        "codes_raced": codes_raced,
        "raced_fraction": round(float(raced.summary["raced_fraction"]), 4),
        "median_spread_us": raced.summary["median_spread_us"],
        "max_in_flight": raced.summary["max_in_flight"],
        "double_won": len(double_codes),
        "double_won_codes": sorted(double_codes),
        "no_winner": len(no_winner),
        "no_winner_codes": no_winner[:20],
        "unfinished_workers": sorted(unfinished_workers),
        "workers": {name: dict(counts) for name, counts in sorted(per_worker.items())},
    }
    return Result(valid=not double_codes, summary=summary, evidence=evidence)


def exit_status(result: Result) -> int:
    """0 holds, 1 a code was won twice, 2 nothing raced (not a pass)."""
    if not result.valid:
        return EXIT_VIOLATED
    return EXIT_INCONCLUSIVE if result.summary.get("status") == "inconclusive" else EXIT_HOLDS


def render(result: Result, *, target: str = "?", run_id: str = "?") -> str:
    """The verdict as a few human lines (what Locust prints at the end of a run)."""
    s = result.summary
    head = {"holds": "HOLDS: no code was won twice",
            "violated": f"VIOLATED: {s['double_won']} code(s) won more than once",
            "inconclusive": "INCONCLUSIVE: " + str(
                s.get("reason") or "no code was both raced (two attempts in flight at once) and "
                                   "won; nothing proven")}[s["status"]]
    spread = "-" if s["median_spread_us"] is None else f"{s['median_spread_us']:.0f} µs"
    concurrency = s.get("server_concurrency")
    about = f"target {target}, run {run_id}" + (
        f", server concurrency {concurrency}" if concurrency is not None else "")
    lines = [
        f"single-winner verdict ({about}): {head}",
        f"  wins {s['wins']}  losses {s['losses']}  errors {s['errors']}  attempts {s['attempts']}",
        f"  codes attempted {s['codes']}  codes raced {s['codes_raced']} "
        f"({s['raced_fraction']:.0%})  max in flight {s['max_in_flight']}  "
        f"median start spread {spread}",
    ]
    if s.get("wins_missing_from_ledger"):
        lines.append(f"  wins missing from the ledger (its write failed; counted from the racers' "
                     f"outcomes): {s['wins_missing_from_ledger']}")
    if s.get("shared_token_wins"):
        lines.append(f"  racers answered with a token set another racer also got (one issue, "
                     f"counted once): {s['shared_token_wins']}")
    if s["no_winner"]:
        lines.append(f"  codes nobody won (reported, not failed): {s['no_winner']}")
    if len(s["workers"]) > 1:
        lines.append("  per worker: " + ", ".join(
            f"{name} {c['wins']} wins / {c['attempts']} attempts" for name, c in s["workers"].items()))
    if s["unfinished_workers"]:
        lines.append(f"  workers that never finished reporting: {', '.join(s['unfinished_workers'])}")
    for row in result.evidence[:20]:
        winners = ", ".join(row["winners"][:4]) + (", …" if len(row["winners"]) > 4 else "")
        lines.append(f"  double win: code index {row['code_index']} won {row['wins']} times "
                     f"(by {winners})")
    if len(result.evidence) > 20:
        lines.append(f"  ... and {len(result.evidence) - 20} more double-won codes")
    return "\n".join(lines)


def to_json(result: Result, **extra: Any) -> str:
    """The verdict as one JSON object (for ``--verdict-file``)."""
    return json.dumps({**extra, **asdict(result)}, default=str)
