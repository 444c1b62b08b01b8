"""Races: N racers released together by a barrier on each of M codes, recorded as a history."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import queue
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, Protocol

from psycopg import conninfo

from harness.checkers import Result, overlap, single_winner
from harness.claims import Isolation, Strategy
from harness.database import Database
from harness.errors import InternalError, SetupError
from harness.history import History, Op, classify
from harness.repository import AuthCodeParams, OAuthRepository

RACE_CLIENT = "race-client"
RACE_USER = "race-user"
REDIRECT_URI = "https://client.example/cb"


def race_code(seed: str, index: int) -> str:
    """The raw code for ``index``: anyone who knows the seed derives it, nothing is shared."""
    return hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()


@dataclass(frozen=True)
class RaceReport:
    """The history, the single-winner verdict and the measured overlap."""

    history: History
    winners: Result
    overlap: Result
    #: Run facts: processes, elapsed_s, ops counts, throughput, errors, nemesis (``race_processes``).
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.winners.valid


def seed_codes(target: OAuthRepository, seed: str, codes: int) -> None:
    """Store ``codes`` race codes for ``RACE_CLIENT`` (no PKCE, so every racer sends the same request)."""
    target.db.ensure_party(RACE_CLIENT, RACE_USER)
    for i in range(codes):
        target.store_authorization_code(
            AuthCodeParams(code=race_code(seed, i), client_id=RACE_CLIENT, user_id=RACE_USER,
                           redirect_uri=REDIRECT_URI, scope="openid")
        )


def race_threads(
    target: OAuthRepository,
    *,
    racers: int,
    codes: int,
    seed: str = "race",
    operation: str = "exchange",
    progress: Callable[[int], None] | None = None,
) -> RaceReport:
    """``racers`` threads attempt each of ``codes`` codes together, released by a barrier per code.

    ``operation`` is ``exchange`` (the grant flow) or ``validate`` (the claim
    and its checks only). Codes must already be stored (``seed_codes``).
    """
    history = History()
    barrier = threading.Barrier(racers)
    call: Callable[[str], Any]
    if operation == "exchange":
        def call(code: str) -> Any:
            return target.exchange_code(code, RACE_CLIENT, REDIRECT_URI)
    else:
        def call(code: str) -> Any:
            return target.validate_authorization_code(code, RACE_CLIENT, REDIRECT_URI)

    def racer(process: int) -> None:
        for i in range(codes):
            code = race_code(seed, i)
            barrier.wait()
            history.run(process, "exchange", {"code": i}, partial(call, code))
            if process == 0 and progress is not None:
                progress(1)

    threads = [threading.Thread(target=racer, args=(p,), name=f"racer-{p}") for p in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return RaceReport(history, single_winner(history), overlap(history))


# -- races across processes ---------------------------------------------------
#
# One interpreter with threads reaches only ~0.6x of what the server can do
# (DESIGN.md "Performance"), and a race bound to one GIL overlaps less than
# real clients do. So racers live in several OS processes, each with its own
# connections; a cross-process barrier releases every racer of a code
# together; each process stamps its ops with ``time.monotonic_ns()`` (one
# clock for the whole machine) and streams them back to be merged.

#: ``application_name`` prefix of racer connections (the nemesis finds them by it).
APP_NAME_PREFIX = "harness-race"
#: How long a racer waits for the others at a code's barrier before giving up.
BARRIER_TIMEOUT_S = 60.0
_FLUSH_OPS = 256
_FLUSH_S = 0.1


@dataclass(frozen=True)
class RaceSpec:
    """Everything a racer process needs to rebuild its target (picklable, no live objects)."""

    url: str
    target: str
    pepper: str | None
    seed: str
    codes: int
    racers: int
    operation: str = "exchange"
    strategy: str | None = None
    isolation: str | None = None
    retry_serialization: int = 0
    app_name: str = APP_NAME_PREFIX
    barrier_timeout_s: float = BARRIER_TIMEOUT_S

    def target_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.strategy is not None:
            options["claim_strategy"] = Strategy(self.strategy)
        if self.isolation is not None:
            options["claim_isolation"] = Isolation(self.isolation)
        return options


def _is_serialization_failure(op: Op) -> bool:
    return op.type == "fail" and (op.error or "").startswith("serialization")


def attempt(
    process: int | str,
    f: str,
    value: Any,
    call: Callable[[], Any],
    record: Callable[[Op], None] | None = None,
) -> tuple[Op, Op]:
    """Run ``call`` once as operation ``f``: its invoke and its ok / fail / info completion.

    ``record`` gets the invoke before the call and the completion after it,
    so an attempt that never returns still leaves its invoke (read: ``info``).
    """
    invoke = Op(process, "invoke", f, value, time.monotonic_ns())
    if record is not None:
        record(invoke)
    try:
        call()
    except Exception as exc:  # every outcome is recorded; none escapes unrecorded
        type_, reason = classify(exc)
        done = Op(process, type_, f, value, time.monotonic_ns(), reason)
    else:
        done = Op(process, "ok", f, value, time.monotonic_ns())
    if record is not None:
        record(done)
    return invoke, done


def _racer_process(
    spec: RaceSpec, racer_ids: list[int], barrier: Any, results: Any, stop: Any
) -> None:
    """One OS process: its racers (one thread each) race every code and stream their ops back."""
    from harness.database import connect
    from harness.targets import load_target

    # Under a nemesis the pools discard dead connections by the hundred; each
    # one is an expected, recorded ``info`` op, not news for stderr.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        url = conninfo.make_conninfo(spec.url, application_name=spec.app_name)
        db = connect(url, migrate=False, pool_size=len(racer_ids) + 1)
        target = load_target(spec.target, db, pepper=spec.pepper, **spec.target_options())
    except Exception as exc:
        results.put(("error", racer_ids, f"racer setup failed: {exc}"))
        barrier.abort()  # nobody waits for racers that will never come
        results.put(("done", racer_ids, None))
        return
    results.put(("ready", racer_ids, None))

    call: Callable[[str], Any]
    if spec.operation == "exchange":
        def call(code: str) -> Any:
            return target.exchange_code(code, RACE_CLIENT, REDIRECT_URI)
    else:
        def call(code: str) -> Any:
            return target.validate_authorization_code(code, RACE_CLIENT, REDIRECT_URI)

    buffer: list[Op] = []
    lock = threading.Lock()
    last_flush = [time.monotonic()]

    def flush(force: bool = False) -> None:
        with lock:
            if buffer and (force or len(buffer) >= _FLUSH_OPS
                           or time.monotonic() - last_flush[0] >= _FLUSH_S):
                results.put(("ops", racer_ids, list(buffer)))
                buffer.clear()
                last_flush[0] = time.monotonic()

    def record(op: Op) -> None:
        with lock:
            buffer.append(op)

    def keep_flushing() -> None:
        # A racer stuck in an attempt does not flush: its invoke must still reach the parent.
        while not finished.wait(0.5):
            flush()

    finished = threading.Event()
    threading.Thread(target=keep_flushing, daemon=True).start()
    problems: list[str] = []

    def racer(process: int) -> None:
        for i in range(spec.codes):
            if stop.is_set():
                return
            code = race_code(spec.seed, i)
            try:
                barrier.wait(spec.barrier_timeout_s)
            except threading.BrokenBarrierError:
                if not stop.is_set():
                    problems.append(f"racer {process}: barrier broken at code {i}")
                return
            for n in range(1 + spec.retry_serialization):
                _, done = attempt(process, spec.operation, {"code": i, "attempt": n},
                                  partial(call, code), record)
                if not _is_serialization_failure(done):
                    break
            flush()

    threads = [threading.Thread(target=racer, args=(p,), daemon=True) for p in racer_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished.set()
    flush(force=True)
    for problem in problems:
        results.put(("error", racer_ids, problem))
    db.close()
    results.put(("done", racer_ids, None))


@cache
def _context() -> Any:
    # forkserver: children fork from a clean server that has already imported
    # the harness (cheap to start, no inherited pool threads or sockets).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["harness.race", "harness.targets", "harness.repository"])
    return ctx


class Nemesis(Protocol):
    """A fault injector run beside a race (see ``harness.nemesis``)."""

    def start(self, history: History) -> None: ...

    def stop(self) -> dict[str, Any]: ...


def _split(racers: int, processes: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(processes)]
    for r in range(racers):
        groups[r % processes].append(r)
    return [g for g in groups if g]


def race_processes(
    spec: RaceSpec,
    *,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
    nemesis: Nemesis | None = None,
    timeout_s: float = 600.0,
) -> RaceReport:
    """Race ``spec.racers`` racers over ``spec.codes`` stored codes from ``processes`` OS processes.

    Codes must already be stored (``seed_codes``). ``progress`` is called with
    the number of codes every racer has finished. The run never waits longer
    than ``timeout_s``: racers still running then are stopped, their open
    attempts stay indeterminate, and ``stats["incomplete"]`` says so.
    """
    if spec.racers < 1 or spec.codes < 1:
        raise ValueError("a race needs at least one racer and one code")
    processes = max(1, min(processes or spec.racers, spec.racers))
    ctx = _context()
    barrier = ctx.Barrier(spec.racers)
    results = ctx.Queue()
    stop = ctx.Event()
    groups = _split(spec.racers, processes)
    workers = [ctx.Process(target=_racer_process, args=(spec, g, barrier, results, stop),
                           name=f"racers-{g[0]}", daemon=True) for g in groups]
    history = History()
    errors: list[str] = []
    per_code: dict[int, int] = defaultdict(int)
    finished = 0
    done = ready = 0
    deadline = time.monotonic() + timeout_s
    nemesis_stats: dict[str, Any] = {}
    nemesis_started = False
    for w in workers:
        w.start()
    try:
        while done < len(workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors.append(f"timed out after {timeout_s:.0f} s")
                break
            try:
                kind, _ids, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    errors.append("racer processes exited without reporting")
                    break
                continue
            if kind == "ops":
                history.extend(payload)
                for op in payload:
                    if op.type != "invoke" and op.process != "nemesis":
                        i = op.value["code"]
                        per_code[i] += 1 if not _is_retry(op) else 0
                        if per_code[i] == spec.racers:
                            finished += 1
                            if progress is not None:
                                progress(1)
            elif kind == "ready":
                ready += 1
                if ready == len(workers) and nemesis is not None:
                    nemesis.start(history)
                    nemesis_started = True
            elif kind == "error":
                errors.append(payload)
            elif kind == "done":
                done += 1
    finally:
        stop.set()
        barrier.abort()
        if nemesis is not None and nemesis_started:
            nemesis_stats = nemesis.stop()
        _drain(results, history)
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)
        _drain(results, history)
        results.close()
    racer_ops = [op for op in history.ops if op.process != "nemesis"]
    starts = [op.time for op in racer_ops if op.type == "invoke"]
    ends = [op.time for op in racer_ops if op.type != "invoke"]
    elapsed_s = (max(ends) - min(starts)) / 1e9 if starts and ends else 0.0
    counts = {t: sum(1 for op in racer_ops if op.type == t) for t in ("invoke", "ok", "fail", "info")}
    stats: dict[str, Any] = {
        "processes": len(workers),
        "elapsed_s": elapsed_s,
        "ops": counts,
        "codes_finished": finished,
        "attempts_per_s": counts["invoke"] / elapsed_s if elapsed_s else 0.0,
        "codes_per_s": finished / elapsed_s if elapsed_s else 0.0,
        "serialization_failures": sum(1 for op in racer_ops if _is_serialization_failure(op)),
        "errors": errors,
        "incomplete": finished < spec.codes or bool(errors),
    }
    if nemesis is not None:
        stats["nemesis"] = nemesis_stats
    f = spec.operation
    return RaceReport(history, single_winner(history, f=f), overlap_first_attempts(history, f=f),
                      stats)


def _is_retry(op: Op) -> bool:
    return isinstance(op.value, dict) and op.value.get("attempt", 0) > 0


def _drain(results: Any, history: History) -> None:
    while True:
        try:
            kind, _ids, payload = results.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        if kind == "ops":
            history.extend(payload)


def overlap_first_attempts(history: History, *, f: str) -> Result:
    """``overlap`` over the barrier-released attempts only (a retry after 40001 starts late by design)."""
    first = History([op for op in history.ops if op.f == f and not _is_retry(op)])
    return overlap(first, f=f)


def default_processes(racers: int) -> int:
    """Two racer processes per core (capped by the racers): measured as fast as one per racer here."""
    return max(1, min(racers, 2 * (os.cpu_count() or 1)))


def race(
    db: Database,
    target: str | None = None,
    *,
    racers: int,
    codes: int,
    pepper: str | None = None,
    seed: str | None = None,
    processes: int | None = None,
    operation: str = "exchange",
    strategy: str | None = None,
    isolation: str | None = None,
    retry_serialization: int = 0,
    nemesis: str = "none",
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 600.0,
) -> RaceReport:
    """Seed ``codes`` fresh codes, race them from several processes, and judge the history.

    ``strategy`` / ``isolation`` override the target's ``claim_strategy`` /
    ``claim_isolation``. ``stats`` gains the settings, ``double_won`` and
    ``no_winner`` (code index and a shortened at-rest digest, never the raw code).
    """
    from harness.nemesis import make_nemesis
    from harness.settings import Settings
    from harness.targets import load_target

    if racers < 2:
        raise SetupError("a race needs at least 2 racers")
    if codes < 1:
        raise SetupError("a race needs at least 1 code")
    if operation not in ("exchange", "validate"):
        raise SetupError(f"unknown operation {operation!r}: use exchange or validate")
    settings = Settings.from_env()
    pepper = pepper or settings.pepper
    if not pepper:
        raise SetupError("no pepper: set HARNESS_AT_REST_PEPPER (or pass one)")
    name = target or settings.target
    spec = RaceSpec(url=db.url, target=name, pepper=pepper, seed=seed or secrets.token_hex(8),
                    codes=codes, racers=racers, operation=operation, strategy=strategy,
                    isolation=isolation, retry_serialization=retry_serialization,
                    app_name=f"{APP_NAME_PREFIX}-{secrets.token_hex(4)}")
    repo = load_target(name, db, pepper=pepper, **spec.target_options())
    try:
        seed_codes(repo, spec.seed, codes)
    except InternalError as exc:
        raise SetupError(f"could not store the race codes ({exc.detail}); "
                         "a code of this seed may already exist: use another seed") from exc
    fault = make_nemesis(db, nemesis, spec.app_name)
    report = race_processes(spec, processes=processes or default_processes(racers),
                            progress=progress, nemesis=fault, timeout_s=timeout_s)

    def listed(problem: str) -> list[dict[str, Any]]:
        return [{"code": row["code"], "digest": repo.hash(race_code(spec.seed, row["code"]))[:12],
                 "wins": row["wins"]}
                for row in sorted(report.winners.evidence, key=lambda r: int(r["code"]))
                if row["problem"] == problem]

    report.stats.update({
        "target": name,
        "strategy": str(getattr(repo, "claim_strategy", strategy)),
        "isolation": str(getattr(repo, "claim_isolation", isolation)),
        "operation": operation,
        "racers": racers,
        "codes": codes,
        "retry_serialization": retry_serialization,
        "double_won": listed("won more than once"),
        "no_winner": listed("no winner"),
    })
    return report


#: Below this fraction of codes with ≥ 2 attempts in flight at once, a run did not race.
MIN_RACED_FRACTION = 0.9


def verdict(report: RaceReport, *, min_raced: float = MIN_RACED_FRACTION) -> str:
    """``pass``, or why not: ``double win``, ``no winner``, ``incomplete`` or ``no race``.

    A run in which the racers did not overlap proves nothing, so it never passes.
    """
    if report.winners.summary.get("double_wins", 0):
        return "double win"
    if report.winners.summary.get("no_winner", 0):
        return "no winner"
    if report.stats.get("incomplete"):
        return "incomplete"
    if report.overlap.summary.get("raced_fraction", 0.0) < min_raced:
        return "no race"
    return "pass"
