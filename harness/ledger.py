"""The load ledger: a Locust run's wins and attempts in ``harness_ledger*`` tables, and a pure checker.

A win over HTTP (``load/locustfile.py --endpoint``) also says which token set
it got: the fingerprint of its access token (``harness.redact.fingerprint``),
kept in the attempt row's ``detail`` as ``token sha256:…``. A server that
answers several racers with the same pair issued it once, so the checker
counts distinct token sets per code, not 200s.

A refresh race (``RefreshUser``) uses the same tables: slot *i*'s refresh token
takes the place of code *i*, a win's token set is the new refresh token it got,
and the reuse probes (was the family revoked after the race?) are attempt rows of
the racer ``PROBE_RACER``, which :func:`read_run` leaves out of the race.

:class:`LiveTally` applies the checker's rules to the racers' outcomes as they
come in (what the web UI shows during a run); :func:`verdict_rows` and
:func:`verdict_html` present a summary, live or judged, to Locust's web UI tab
and HTML report.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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
#: What a run races: authorization codes (exchanges) or refresh tokens (refreshes, RFC 6749 §6).
Race = Literal["code", "refresh"]
#: How a verdict names what was raced: (a thing, things, won, a double win), per race.
NOUNS: dict[str, tuple[str, str, str, str]] = {
    "code": ("code", "codes", "won", "double win"),
    "refresh": ("refresh token", "refresh tokens", "refreshed", "double refresh"),
}
#: The racer of a reuse probe's rows in ``harness_ledger_attempts``: after a refresh race, the
#: winner's new refresh token presented once more. The schema has no table of its own for them
#: (and needs none: the rows go with the run's), so :func:`read_run` keeps them out of the race.
PROBE_RACER = "reuse-probe"


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


def _attempt(row: tuple[Any, ...]) -> Attempt:
    w, r, i, o, s, f, d = row
    return Attempt(str(w), str(r), int(i), o, int(s), int(f), *unpack_detail(d))


def read_run(conn: psycopg.Connection[Any], run_id: str) -> tuple[list[Win], list[Attempt]]:
    """The wins and the attempts of a run (a refresh race's reuse probes are not attempts)."""
    wins = [
        Win(int(i), str(h), str(w), int(s or 0), int(f or 0))
        for i, h, w, s, f in conn.execute(
            "SELECT code_index, code_hash, winner, started_ns, finished_ns FROM harness_ledger "
            "WHERE run_id = %s ORDER BY code_index, started_ns",
            (run_id,),
        )
    ]
    attempts = [
        _attempt(row) for row in conn.execute(
            "SELECT worker, racer, code_index, outcome, started_ns, finished_ns, detail "
            "FROM harness_ledger_attempts WHERE run_id = %s AND racer <> %s",
            (run_id, PROBE_RACER),
        )
    ]
    return wins, attempts


def read_probes(conn: psycopg.Connection[Any], run_id: str) -> list[Attempt]:
    """The reuse probes of a refresh race (``won``: the new token was accepted, ``lost``: refused)."""
    return [
        _attempt(row) for row in conn.execute(
            "SELECT worker, racer, code_index, outcome, started_ns, finished_ns, detail "
            "FROM harness_ledger_attempts WHERE run_id = %s AND racer = %s",
            (run_id, PROBE_RACER),
        )
    ]


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
          server_concurrency: int | None = None, race: Race = "code") -> Result:
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
    ``race`` (``summary["race"]``) only names what was raced, in the reason and in :func:`render`:
    a refresh race is judged by the same rules, its token sets being the new refresh tokens.
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
        thing, _, won, _ = NOUNS[race]
        reason = (f"no {thing} was both raced (two attempts in flight at once) and {won}; "
                  "nothing proven")
    elif server_concurrency is not None and server_concurrency <= 1:
        status = "inconclusive"
        reason = ("the server runs one request at a time (declared concurrency "
                  f"{server_concurrency}): the racers overlapped on the wire, never in the server")
    else:
        status = "holds"
    summary: dict[str, Any] = {
        "status": status,
        "race": race,
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


def headline(summary: dict[str, Any]) -> str:
    """The verdict in one phrase: ``HOLDS: no code was won twice``, ``VIOLATED: …``, ``INCONCLUSIVE: …``."""
    thing, _, won, _ = NOUNS[str(summary.get("race") or "code")]
    status = summary["status"]
    if status == "holds":
        return f"HOLDS: no {thing} was {won} twice"
    if status == "violated":
        return f"VIOLATED: {summary['double_won']} {thing}(s) {won} more than once"
    return "INCONCLUSIVE: " + str(
        summary.get("reason") or f"no {thing} was both raced (two attempts in flight at once) and "
                                 f"{won}; nothing proven")


def render(result: Result, *, target: str = "?", run_id: str = "?") -> str:
    """The verdict as a few human lines (what Locust prints at the end of a run)."""
    s = result.summary
    thing, things, won, double = NOUNS[str(s.get("race") or "code")]
    spread = "-" if s["median_spread_us"] is None else f"{s['median_spread_us']:.0f} µs"
    concurrency = s.get("server_concurrency")
    about = f"target {target}, run {run_id}" + (
        f", server concurrency {concurrency}" if concurrency is not None else "")
    lines = [
        f"single-winner verdict ({about}): {headline(s)}",
        f"  wins {s['wins']}  losses {s['losses']}  errors {s['errors']}  attempts {s['attempts']}",
        f"  {things} attempted {s['codes']}  {things} raced {s['codes_raced']} "
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
        lines.append(f"  {things} nobody {won} (reported, not failed): {s['no_winner']}")
    if len(s["workers"]) > 1:
        lines.append("  per worker: " + ", ".join(
            f"{name} {c['wins']} wins / {c['attempts']} attempts" for name, c in s["workers"].items()))
    if s["unfinished_workers"]:
        lines.append(f"  workers that never finished reporting: {', '.join(s['unfinished_workers'])}")
    for row in result.evidence[:20]:
        winners = ", ".join(row["winners"][:4]) + (", …" if len(row["winners"]) > 4 else "")
        lines.append(f"  {double}: {thing} index {row['code_index']} {won} {row['wins']} times "
                     f"(by {winners})")
    if len(result.evidence) > 20:
        lines.append(f"  ... and {len(result.evidence) - 20} more {things} {won} more than once")
    return "\n".join(lines)


def to_json(result: Result, **extra: Any) -> str:
    """The verdict as one JSON object (for ``--verdict-file``)."""
    return json.dumps({**extra, **asdict(result)}, default=str)


# -- a refresh race: did reuse detection revoke the family? (pure) ----------------------------------


def reuse_report(wins: Iterable[Win], attempts: Iterable[Attempt], probes: Iterable[Attempt]
                 ) -> dict[str, Any]:
    """After a refresh token was raced, did the server revoke its family (RFC 9700 §4.14.2)?

    Every racer but the first presented a token already used: that is reuse, and a server
    that detects it revokes the whole family, the winner's new token included. A probe
    presents each winner's new token once the slot's racers are done: refused (``lost``)
    means the family was revoked, accepted (``won``) that the new token outlived the reuse.
    Counted per token presented at least twice and won: ``alive`` when any winner's new
    token was accepted, ``revoked`` when every winner's was refused, ``not_probed`` otherwise
    (a probe missing or indeterminate). A report, not the verdict: the invariant is at most
    one refresh per token.
    """
    attempts = list(attempts)
    presented = Counter(a.code_index for a in attempts)
    winners = won_by(wins, attempts)
    outcomes: dict[int, list[str]] = defaultdict(list)
    for p in probes:
        outcomes[p.code_index].append(p.outcome)
    reused = sorted(i for i, names in winners.items() if names and presented[i] >= 2)
    revoked: list[int] = []
    alive: list[int] = []
    unknown: list[int] = []
    for i in reused:
        seen = outcomes.get(i, [])
        if "won" in seen:
            alive.append(i)
        elif seen.count("lost") >= len(winners[i]):
            revoked.append(i)
        else:
            unknown.append(i)
    return {"reused": len(reused), "revoked": len(revoked), "alive": len(alive),
            "not_probed": len(unknown), "alive_indices": alive[:20],
            "probes": sum(len(v) for v in outcomes.values())}


def render_reuse(report: dict[str, Any]) -> str:
    """One verdict line for :func:`reuse_report`."""
    return (f"  reuse detection (RFC 9700 §4.14.2), after {report['reused']} raced refresh token(s): "
            f"family revoked (the winner's new token refused) {report['revoked']}  "
            f"new token still accepted {report['alive']}  not probed {report['not_probed']}")


# -- live: the run so far, from the racers' own outcomes (pure) --------------------------------------


@dataclass
class _LiveCode:
    """One code (or refresh token) so far: its attempts' starts, first finish, and token sets won."""

    starts: list[int] | None = field(default_factory=list)  # None once compacted (see LiveTally.compact)
    first_start: int = 0
    last_start: int = 0
    first_end: int | None = None
    in_flight: int = 0
    winners: set[str] = field(default_factory=set)


class LiveTally:
    """The checker's rules applied to attempts as they are reported: what the web UI shows live.

    A win counts as its token set (its token's fingerprint, else its racer), as in
    :func:`token_sets`; a code is double-won at its second distinct set. Overlap as
    ``harness.checkers.overlap``: per code, the attempts started before the first one
    returned (in flight at once) and the spread of the starts. Not the verdict: it sees what
    the racers reported so far, never the ledger; the verdict is :func:`check` at the end.
    """

    def __init__(self, run_id: str, race: Race = "code", *, keep: int = 4096) -> None:
        self.run_id = run_id
        self.race: Race = race
        #: How many of the latest codes keep their attempts' starts (see :meth:`compact`).
        self.keep = keep
        self.codes: dict[int, _LiveCode] = {}
        self.outcomes: Counter[str] = Counter()
        self.double: set[int] = set()
        self.probes: Counter[str] = Counter()

    def add(self, a: Attempt) -> bool:
        """Count one attempt; True when it made its code double-won (its second distinct token set)."""
        self.outcomes[a.outcome] += 1
        code = self.codes.get(a.code_index)
        if code is None:
            code = self.codes[a.code_index] = _LiveCode(first_start=a.started_ns, last_start=a.started_ns)
            if len(self.codes) % self.keep == 0:  # codes are slots: a new one means the old are done
                self.compact(a.code_index - self.keep)
        code.first_start = min(code.first_start, a.started_ns)
        code.last_start = max(code.last_start, a.started_ns)
        if code.starts is not None:
            code.starts.append(a.started_ns)
        if code.first_end is None or a.finished_ns < code.first_end:
            code.first_end = a.finished_ns
            if code.starts is not None:
                code.in_flight = sum(1 for s in code.starts if s < a.finished_ns)
            else:  # compacted: the earlier starts are gone; a late attempt is rare, keep the count
                code.in_flight = max(code.in_flight, 1)
        elif a.started_ns < code.first_end:
            code.in_flight += 1
        if a.outcome != "won":
            return False
        code.winners.add(a.token or f"#{a.worker}/{a.racer}")
        if len(code.winners) > 1 and a.code_index not in self.double:
            self.double.add(a.code_index)
            return True
        return False

    def add_probe(self, outcome: str) -> None:
        """A reuse probe's outcome (``won``: the new token was accepted, ``lost``: refused)."""
        self.probes[outcome] += 1

    def compact(self, before: int) -> None:
        """Forget the starts of codes below index ``before``, keeping their counts: a run of hours
        would otherwise hold every attempt it ever saw (a late attempt of such a code still counts,
        its in-flight figure then approximately)."""
        for i, code in self.codes.items():
            if i < before and code.starts is not None:
                code.starts = None

    def summary(self) -> dict[str, Any]:
        """The keys of :func:`check`'s summary that a live tally knows (``status``: holds or violated
        so far, or inconclusive while nothing raced and won)."""
        codes = self.codes.values()
        raced = sum(1 for c in codes if c.in_flight >= 2)
        spreads = sorted((c.last_start - c.first_start) / 1000 for c in codes)
        wins = sum(len(c.winners) for c in codes)
        if self.double:
            status = "violated"
        elif raced and wins:
            status = "holds"
        else:
            status = "inconclusive"
        return {
            "status": status,
            "race": self.race,
            "reason": None if status != "inconclusive" else "nothing both raced and won yet",
            "wins": wins,
            "losses": self.outcomes["lost"],
            "errors": self.outcomes["error"],
            "attempts": sum(self.outcomes.values()),
            "codes": len(self.codes),
            "codes_won": sum(1 for c in codes if c.winners),
            "codes_raced": raced,
            "raced_fraction": round(raced / len(self.codes), 4) if self.codes else 0.0,
            "median_spread_us": spreads[len(spreads) // 2] if spreads else None,
            "max_in_flight": max((c.in_flight for c in codes), default=0),
            "double_won": len(self.double),
            "double_won_codes": sorted(self.double),
            "probes": dict(self.probes),
        }


# -- presenting a summary: Locust's web UI tab and HTML report (pure) --------------------------------


def verdict_rows(summary: dict[str, Any], *, state: str, target: str = "?", run_id: str = "?",
                 extra: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The rows of the web UI's single-winner tab: ``{"name": …, "value": …}``.

    ``state`` says where the numbers come from: ``live`` (the racers' reports so far),
    ``judging`` (the run stopped, the ledger not read yet) or ``judged`` (the verdict).
    """
    thing, things, won, _ = NOUNS[str(summary.get("race") or "code")]
    if state == "judged":
        verdict = headline(summary)
    elif summary["double_won"]:
        verdict = f"VIOLATED so far: {summary['double_won']} {thing}(s) {won} more than once"
    else:
        verdict = f"no {thing} {won} twice so far" + (" (judging…)" if state == "judging" else "")
    spread = summary.get("median_spread_us")
    doubles = summary.get("double_won_codes") or []
    rows = [
        ("verdict", verdict),
        ("source", {"live": "live: the racers' own reports, every few seconds",
                    "judging": "the run stopped: waiting for every worker's last batch, then the ledger",
                    "judged": "judged from the ledger when the run stopped"}.get(state, state)),
        ("target", f"{target} (run {run_id})"),
        ("wins", str(summary["wins"])),
        (f"{things} {won} more than once", str(summary["double_won"]) + (
            ": indices " + ", ".join(map(str, doubles[:20])) + (", …" if len(doubles) > 20 else "")
            if doubles else "")),
        ("losses / errors / attempts", f"{summary['losses']} / {summary['errors']} / {summary['attempts']}"),
        (f"{things} raced (≥ 2 attempts in flight at once)",
         f"{summary['codes_raced']} of {summary['codes']} attempted ({summary['raced_fraction']:.0%})"),
        ("max in flight", str(summary["max_in_flight"])),
        ("median start spread", "-" if spread is None else f"{spread:.0f} µs"),
        *extra,
    ]
    return [{"name": name, "value": value} for name, value in rows]


def verdict_html(rows: Sequence[dict[str, str]], text: str, *, status: str) -> str:
    """A self-contained HTML section (the rows, then the printed verdict) for Locust's HTML report."""
    colour = {"holds": "#2e7d32", "violated": "#c62828"}.get(status, "#ef6c00")
    cells = "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0;font-weight:normal">'
        f'{html.escape(r["name"])}</th><td style="padding:2px 0">{html.escape(r["value"])}</td></tr>'
        for r in rows)
    return (
        '<section id="claimcheck-verdict" style="font-family:sans-serif;margin:16px 24px;padding:12px 16px;'
        f'border-left:6px solid {colour};background:#fafafa;color:#212121">'
        '<h2 style="margin:0 0 8px 0">Single-winner verdict (claimcheck)</h2>'
        f'<table style="border-collapse:collapse;margin-bottom:8px">{cells}</table>'
        f'<pre style="white-space:pre-wrap;margin:0">{html.escape(text)}</pre></section>')


def inject_report(report: str, section: str) -> str:
    """``report`` (Locust's HTML report) with ``section`` at the top of its body.

    Before the React root, found from the end: the report's inline script comes first and
    could hold the same text, the body's markup comes last.
    """
    marker = '<div id="root"></div>'
    head, found, tail = report.rpartition(marker)
    if not found:
        return report.replace("</body>", section + "</body>", 1)
    return head + section + marker + tail
