"""Races: N racers released together by a barrier on each of M codes, recorded as a history."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from harness.checkers import Result, overlap, single_winner
from harness.cpu import find_postmaster, process_cpu_s, server_cpu_s
from harness.database import Database
from harness.errors import InternalError, SetupError
from harness.history import History, Op, OpInterner, classify
from harness.redact import fingerprint
from harness.repository import AuthCodeParams
from harness.scope import RunScope
from harness.sut.claims import Isolation, Strategy
from harness.sut.faithful import OAuthRepository
from harness.sut.tokens import Tokens

#: The client and user of a race on a database the harness created (tests); ``race()`` names its
#: own per run (``cc-<run id>-racer``) so that it never writes a row it cannot tell apart.
RACE_CLIENT = "race-client"
RACE_USER = "race-user"
REDIRECT_URI = "https://client.example/cb"


#: ``seed_codes`` stores this many codes at once, from this many codes on (below: one by one).
SEED_THREADS = 8
SEED_PARALLEL_FROM = 64


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


def seed_codes(target: OAuthRepository, seed: str, codes: int, *, client: str = RACE_CLIENT,
               user: str = RACE_USER, register: bool = True) -> None:
    """Store ``codes`` race codes for ``client`` (no PKCE, so every racer sends the same request).

    ``register=False`` when the caller has registered the client and user itself (a check does,
    through its context): a reviewer's target need not expose its database as ``db``.
    """
    if register:
        target.db.ensure_party(client, user)

    def store(i: int) -> None:
        target.store_authorization_code(
            AuthCodeParams(code=race_code(seed, i), client_id=client, user_id=user,
                           redirect_uri=REDIRECT_URI, scope="openid")
        )

    if codes < SEED_PARALLEL_FROM:
        for i in range(codes):
            store(i)
        return
    # Each store commits on its own; one at a time, 2,000 codes wait for 2,000 fsyncs (2 s on a
    # shared disk). A few at once share their commits (group commit) and the target is unchanged.
    pool = ThreadPoolExecutor(SEED_THREADS, thread_name_prefix="seed")
    try:
        for _ in pool.map(store, range(codes)):
            pass
    finally:
        # On Ctrl-C or a failed store, the codes not yet started are dropped, not stored anyway.
        pool.shutdown(wait=True, cancel_futures=True)


def race_threads(
    target: OAuthRepository,
    *,
    racers: int,
    codes: int,
    seed: str = "race",
    operation: str = "exchange",
    client: str = RACE_CLIENT,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 120.0,
) -> RaceReport:
    """``racers`` threads attempt each of ``codes`` codes together, released by a barrier per code.

    ``operation`` is ``exchange`` (the grant flow) or ``validate`` (the claim
    and its checks only). Codes must already be stored (``seed_codes``). A
    racer that does not reach the barrier within ``timeout_s`` breaks it: the
    run ends ``incomplete`` rather than waiting forever.
    """
    history = History()
    barrier = threading.Barrier(racers, timeout=timeout_s)
    broken: list[str] = []
    call: Callable[[str], Any]
    if operation == "exchange":
        def call(code: str) -> Any:
            return target.exchange_code(code, client, REDIRECT_URI)
    else:
        def call(code: str) -> Any:
            return target.validate_authorization_code(code, client, REDIRECT_URI)

    def racer(process: int) -> None:
        for i in range(codes):
            code = race_code(seed, i)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                broken.append(f"racer {process}: barrier broken at code {i}")
                return
            history.run(process, "exchange", {"code": i}, partial(call, code))
            if process == 0 and progress is not None:
                progress(1)

    threads = [threading.Thread(target=racer, args=(p,), name=f"racer-{p}", daemon=True)
               for p in range(racers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s * 2
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        barrier.abort()
        broken.append("racers still running after the timeout")
    return RaceReport(history, single_winner(history), overlap(history),
                      {"incomplete": bool(broken), "errors": broken[:5]})


# -- races across processes ---------------------------------------------------
#
# One interpreter with threads reaches only ~0.6x of what the server can do
# (DESIGN.md "Performance"), and a race bound to one GIL overlaps less than
# real clients do. So racers live in several OS processes (``harness._racer``),
# each with its own connections. The barrier of each code lives here, in the
# parent: a racer process reports when its racers stand at code i, and the
# parent releases everybody once all have; so a racer process that dies can
# never leave the others stuck on a lock it held. Each process stamps its ops
# with ``time.monotonic_ns()`` (one clock for the whole machine) and streams
# them back to be merged.

#: ``application_name`` prefix of racer connections (the nemesis finds them by it).
APP_NAME_PREFIX = "harness-race"
#: How long the racers of a process may take to stop after being told to (then they are killed).
STOP_GRACE_S = 1.0


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
    client: str = RACE_CLIENT
    redirect_uri: str = REDIRECT_URI
    #: ``repository``: a target in process, codes derived from the seed; ``http``: an endpoint
    #: description, codes minted by the parent and sent with their verifier at each release.
    kind: str = "repository"

    def target_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.strategy is not None:
            options["claim_strategy"] = Strategy(self.strategy)
        if self.isolation is not None:
            options["claim_isolation"] = Isolation(self.isolation)
        return options


def is_serialization_failure(op: Op) -> bool:
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
        result = call()
    except Exception as exc:  # every outcome is recorded; none escapes unrecorded
        type_, reason = classify(exc)
        done = Op(process, type_, f, value, time.monotonic_ns(), reason)
    else:
        if isinstance(result, Tokens) and isinstance(value, dict):
            # Which token set the win handed out: a server that answers several racers with the
            # same pair has one winner, not several (judged by distinct tokens, never raw ones).
            value = {**value, "token": fingerprint(result.access_token)}
        done = Op(process, "ok", f, value, time.monotonic_ns())
    if record is not None:
        record(done)
    return invoke, done


class Nemesis(Protocol):
    """A fault injector run beside a race (see ``harness.nemesis``)."""

    def start(self, history: History) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class RaceInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a race: the racers are stopped, ``report`` is what had happened."""

    def __init__(self, report: RaceReport) -> None:
        super().__init__("race interrupted")
        self.report = report


def _split(racers: int, processes: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(processes)]
    for r in range(racers):
        groups[r % processes].append(r)
    return [g for g in groups if g]


@dataclass
class _Worker:
    """One racer process as the parent sees it."""

    racer_ids: list[int]
    proc: subprocess.Popen[bytes]
    stderr: Any
    at: int = -1
    ready: bool = False
    done: bool = False
    alive: bool = True
    #: CPU seconds the process spent racing, as it reported when done.
    cpu_s: float = 0.0

    @property
    def name(self) -> str:
        return f"racers {','.join(map(str, self.racer_ids))} (pid {self.proc.pid})"


#: How a racer process starts: with gevent, its racers are greenlets over the same synchronous
#: target code (psycopg 3 cooperates with gevent once patched before it is imported), so one
#: process per core keeps many attempts in flight; with threads, the GIL serialises them.
_GEVENT_BOOT = ("from gevent import monkey; monkey.patch_all(); import runpy; "
                "runpy.run_module('harness._racer', run_name='__main__')")


def use_gevent() -> bool:
    """Racers as greenlets (``HARNESS_RACERS=gevent``) or threads (the default)."""
    return os.environ.get("HARNESS_RACERS", "threads") == "gevent"


def _start_worker(spec: RaceSpec, racer_ids: list[int]) -> _Worker:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the worker, after the race
    command = ([sys.executable, "-c", _GEVENT_BOOT] if use_gevent()
               else [sys.executable, "-m", "harness._racer"])
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, start_new_session=True, bufsize=0)
    worker = _Worker(racer_ids, proc, stderr)
    assert proc.stdin is not None
    _send(worker, ("spec", spec, racer_ids))
    return worker


def _send(worker: _Worker, message: tuple[Any, ...]) -> None:
    from harness._racer import send

    if not worker.alive or worker.proc.stdin is None:
        return
    try:
        send(worker.proc.stdin, threading.Lock(), message)
    except (BrokenPipeError, OSError):
        worker.alive = False


def _stderr_tail(worker: _Worker) -> str:
    try:
        worker.stderr.seek(0)
        text: str = worker.stderr.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    return text.splitlines()[-1][:300] if text else ""


def race_processes(
    spec: RaceSpec,
    *,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
    nemesis: Nemesis | None = None,
    timeout_s: float = 600.0,
    mint: Callable[[int], dict[str, Any]] | None = None,
    won: dict[int, list[dict[str, str]]] | None = None,
    postmaster: int | None = None,
) -> RaceReport:
    """Race ``spec.racers`` racers over ``spec.codes`` stored codes from ``processes`` OS processes.

    Over HTTP (``spec.kind == "http"``), ``mint(i)`` obtains code *i* (and its verifier) just before
    it is released, and ``won`` collects the raw tokens each win returned, for probing afterwards
    (kept in memory only, never in the history). ``postmaster``: the pid of the PostgreSQL server
    on this machine (``harness.cpu.find_postmaster``), whose CPU then shows in ``stats["cpu"]``.

    Codes must already be stored (``seed_codes``). ``progress`` is called with
    the number of codes every racer has finished. Every wait is bounded: the
    run never lasts longer than ``timeout_s``; a racer process that dies ends
    the race; in both cases the racers still running are stopped, their open
    attempts stay indeterminate (``info``), and ``stats["incomplete"]`` says
    why. Ctrl-C stops the racers within about a second and raises
    :class:`RaceInterrupted` with the partial report.
    """
    if spec.racers < 1 or spec.codes < 1:
        raise ValueError("a race needs at least one racer and one code")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise SetupError("the race timeout must be a positive number of seconds")
    processes = max(1, min(processes or spec.racers, spec.racers))
    from harness._racer import receive

    history = History()
    interner = OpInterner()
    errors: list[str] = []
    per_code: dict[int, int] = defaultdict(int)
    finished = 0
    deadline = time.monotonic() + timeout_s
    nemesis_stats: dict[str, Any] = {}
    nemesis_started = False
    interrupted = False
    released = -1
    workers = [_start_worker(spec, g) for g in _split(spec.racers, processes)]
    by_fd = {w.proc.stdout.fileno(): w for w in workers if w.proc.stdout is not None}
    selector = selectors.DefaultSelector()
    for fd, w in by_fd.items():
        selector.register(fd, selectors.EVENT_READ, w)

    def handle(worker: _Worker, message: tuple[Any, ...]) -> None:
        nonlocal finished
        kind = message[0]
        if kind == "ops":
            # Plain tuples from the racers, rebuilt here sharing their strings and value dicts.
            batch = [interner.op(fields) for fields in message[1]]
            history.extend(batch)
            for op in batch:
                if op.type != "invoke" and not _is_retry(op):
                    i = op.value["code"]
                    per_code[i] += 1
                    if per_code[i] == spec.racers:
                        finished += 1
                        if progress is not None:
                            progress(1)
        elif kind == "won":
            if won is not None:
                won.setdefault(int(message[1]), []).append(message[2])
        elif kind == "ready":
            worker.ready = True
        elif kind == "at":
            worker.at = int(message[1])
        elif kind == "error":
            errors.append(str(message[1]))
        elif kind == "done":
            worker.done = True
            if len(message) > 2:
                worker.cpu_s = float(message[2])

    def lost(worker: _Worker) -> None:
        worker.alive = False
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(worker.proc.stdout.fileno())  # type: ignore[union-attr]
        if not worker.done:
            try:  # its pipe closed as it died: the exit status follows within moments
                code: int | None = worker.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            tail = _stderr_tail(worker)
            errors.append(f"racer process died mid-race ({worker.name}, {how})"
                          + (f": {tail}" if tail else ""))

    def pump(timeout: float) -> None:
        """Read what the racer processes have sent within ``timeout`` seconds."""
        for key, _ in selector.select(timeout=timeout):
            worker = key.data
            message = receive(worker.proc.stdout)
            if message is None:
                lost(worker)
            else:
                handle(worker, message)

    parent_cpu, server_cpu = process_cpu_s(), server_cpu_s(postmaster)
    try:
        while not all(w.done or not w.alive for w in workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors.append(f"timed out after {timeout_s:g} s")
                break
            pump(min(remaining, 0.5))
            if any(not w.alive and not w.done for w in workers):
                break  # a racer process died: the others would wait for it at the next code
            if (nemesis is not None and not nemesis_started
                    and all(w.ready for w in workers if w.alive)):
                nemesis.start(history)
                nemesis_started = True
            # The barrier: once every live process stands at the next code, release them all.
            nxt = released + 1
            if nxt < spec.codes and all(w.at >= nxt for w in workers):
                payload = None
                if mint is not None:
                    try:
                        payload = mint(nxt)  # just in time: real servers expire codes in a minute
                    except Exception as exc:  # the server refused or is gone: end with a report
                        errors.append(f"could not obtain code {nxt}: {type(exc).__name__}: {exc}")
                        break
                for w in workers:
                    _send(w, ("go", nxt, payload))
                released = nxt
    except KeyboardInterrupt:
        interrupted = True
        errors.append("interrupted")
    finally:
        for w in workers:
            _send(w, ("stop",))
        grace = time.monotonic() + STOP_GRACE_S
        while any(w.alive and not w.done for w in workers) and time.monotonic() < grace:
            try:
                pump(0.1)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                break
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=5)
            for stream in (w.proc.stdin, w.proc.stdout, w.stderr):
                with contextlib.suppress(OSError, AttributeError):
                    stream.close()  # type: ignore[union-attr]
        selector.close()
        if nemesis is not None and nemesis_started:
            nemesis_stats = nemesis.stop()
    counts, serialization_failures, elapsed_s = _op_stats(history)
    stats: dict[str, Any] = {
        "processes": len(workers),
        "elapsed_s": elapsed_s,
        "ops": counts,
        "codes_finished": finished,
        "attempts_per_s": counts["invoke"] / elapsed_s if elapsed_s else 0.0,
        "codes_per_s": finished / elapsed_s if elapsed_s else 0.0,
        "serialization_failures": serialization_failures,
        "errors": errors,
        "interrupted": interrupted,
        "incomplete": finished < spec.codes or bool(errors),
    }
    server_after = server_cpu_s(postmaster)
    racers_s = sum(w.cpu_s for w in workers)
    parent_s = process_cpu_s() - parent_cpu
    server_s = None if server_cpu is None or server_after is None else server_after - server_cpu
    attempts = counts["invoke"]
    # Where the time went: on a small machine the racers, this process and the server share the
    # cores, so these bound the rate (README, "Performance").
    stats["cpu"] = {
        "racers_s": racers_s, "parent_s": parent_s, "server_s": server_s,
        "client_us_per_attempt": (racers_s + parent_s) / attempts * 1e6 if attempts else None,
        "server_us_per_attempt": server_s / attempts * 1e6 if attempts and server_s is not None else None,
    }
    if nemesis is not None:
        stats["nemesis"] = nemesis_stats
    f = spec.operation
    report = RaceReport(history, single_winner(history, f=f), overlap_first_attempts(history, f=f),
                        stats)
    if interrupted:
        raise RaceInterrupted(report)
    return report


def _op_stats(history: History) -> tuple[dict[str, int], int, float]:
    """The racers' op counts per type, serialization failures, and seconds from first start to last end.

    One pass over the ops, no list of them: a big race holds 1.28 M.
    """
    counts = dict.fromkeys(("invoke", "ok", "fail", "info"), 0)
    serialization = 0
    first_start: int | None = None
    last_end: int | None = None
    for op in history.ops:
        if op.process == "nemesis":
            continue
        if op.type in counts:
            counts[op.type] += 1
        if op.type == "invoke":
            if first_start is None or op.time < first_start:
                first_start = op.time
        else:
            if last_end is None or op.time > last_end:
                last_end = op.time
            if is_serialization_failure(op):
                serialization += 1
    elapsed_s = (last_end - first_start) / 1e9 if first_start is not None and last_end is not None else 0.0
    return counts, serialization, elapsed_s


def _is_retry(op: Op) -> bool:
    value = op.value
    return isinstance(value, dict) and value.get("attempt", 0) > 0


def overlap_first_attempts(history: History, *, f: str) -> Result:
    """``overlap`` over the barrier-released attempts only (a retry after 40001 starts late by design).

    The ops are filtered as they are paired, not copied into a history of their own.
    """
    def first_attempt(op: Op) -> bool:
        return op.f == f and not _is_retry(op)

    return overlap(history, f=f, select=first_attempt)


def default_processes(racers: int) -> int:
    """One racer process per core with greenlets, two with threads (capped by the racers)."""
    per_core = 1 if use_gevent() else 2
    return max(1, min(racers, per_core * (os.cpu_count() or 1)))


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
    scope: RunScope | None = None,
) -> RaceReport:
    """Seed ``codes`` fresh codes, race them from several processes, and judge the history.

    The codes belong to a client and user of this run (``scope``, or a scope
    of its own that is removed when the race ends, also on Ctrl-C).
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
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise SetupError("the race timeout must be a positive number of seconds")
    if retry_serialization < 0:
        raise SetupError("retry_serialization must be >= 0")
    settings = Settings.from_env()
    pepper = pepper or settings.pepper
    if not pepper:
        raise SetupError("no pepper: set HARNESS_AT_REST_PEPPER (or pass one)")
    name = target or settings.target
    repo = load_target(name, db, pepper=pepper, **(
        RaceSpec(url="", target=name, pepper=None, seed="", codes=1, racers=1, strategy=strategy,
                 isolation=isolation).target_options()))
    own_scope = scope is None
    run = scope or RunScope(db, "race")
    try:
        client, user = run.party("racer", "racer-user")
        spec = RaceSpec(url=db.url, target=name, pepper=pepper,
                        seed=seed or secrets.token_hex(8), codes=codes, racers=racers,
                        operation=operation, strategy=strategy, isolation=isolation,
                        retry_serialization=retry_serialization,
                        app_name=f"{APP_NAME_PREFIX}-{run.run_id}", client=client)
        try:
            seed_codes(repo, spec.seed, codes, client=client, user=user)
        except InternalError as exc:
            raise SetupError(f"could not store the race codes ({exc.detail}); "
                             "a code of this seed may already exist: use another seed") from exc
        fault = make_nemesis(db, nemesis, spec.app_name)
        try:
            report = race_processes(spec, processes=processes or default_processes(racers),
                                    progress=progress, nemesis=fault, timeout_s=timeout_s,
                                    postmaster=find_postmaster(db))
        except RaceInterrupted as stopped:
            _describe(stopped.report, repo, spec, name, strategy, isolation)
            raise
        _describe(report, repo, spec, name, strategy, isolation)
        return report
    finally:
        if own_scope:
            run.cleanup()


def _describe(report: RaceReport, repo: Any, spec: RaceSpec, name: str, strategy: str | None,
              isolation: str | None) -> None:
    def listed(problem: str) -> list[dict[str, Any]]:
        return [{"code": row["code"], "digest": repo.hash(race_code(spec.seed, row["code"]))[:12],
                 "wins": row["wins"]}
                for row in sorted(report.winners.evidence, key=lambda r: int(r["code"]))
                if row["problem"] == problem]

    report.stats.update({
        "target": name,
        "strategy": str(getattr(repo, "claim_strategy", strategy)),
        "isolation": str(getattr(repo, "claim_isolation", isolation)),
        "operation": spec.operation,
        "racers": spec.racers,
        "codes": spec.codes,
        "retry_serialization": spec.retry_serialization,
        "double_won": listed("won more than once"),
        "no_winner": listed("no winner"),
    })


def race_http(
    description: str,
    *,
    racers: int,
    codes: int,
    client: str | None = None,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 600.0,
    pkce: str = "auto",
) -> RaceReport:
    """Race a real server's token endpoint over HTTP (an endpoint description, ``harness.targets.endpoint``).

    ``pkce``: ``S256`` mints every code with a pair of its own, ``none`` without, and ``auto``
    (default) first redeems one probe code with S256 and races with S256 if the server redeems
    it, else without PKCE if that redeems: a server whose PKCE is broken (it refuses a right
    verifier; ``pkce.right-verifier`` reports that) would otherwise refuse every racer, and a race
    in which nobody can win tests nothing about the claim. ``stats["pkce"]`` says which.

    Each code is minted by this process just before its release (real servers expire codes within
    a minute), with a PKCE S256 pair of its own, and handed to every racer; racers hold keep-alive
    connections opened before the first barrier. Wins are judged by distinct token sets; a 5xx or a
    lost connection is indeterminate. Afterwards every won code is replayed once and the winners'
    tokens are probed (``stats["after_race"]``), and ``token_count_sql``, when the description has
    it, counts the tokens the server committed against those it returned. ``stats["server_concurrency"]``
    is the description's ``concurrency``: at 1, nothing can race, and ``verdict`` says so.
    """
    from harness import rfc7636
    from harness.targets.endpoint import load_description
    from harness.targets.http import HttpTarget

    if racers < 2:
        raise SetupError("a race needs at least 2 racers")
    if codes < 1:
        raise SetupError("a race needs at least 1 code")
    if pkce not in ("auto", "S256", "none"):
        raise SetupError(f"pkce must be auto, S256 or none, not {pkce!r}")
    desc = load_description(description)
    chosen = desc.client(client) if client else desc.clients[0]
    minter = HttpTarget(desc)
    minted: dict[int, dict[str, Any]] = {}
    use_pkce = pkce == "S256" or (pkce == "auto" and _redeems(minter, chosen.id, chosen.redirect_uri,
                                                               with_pkce=True))
    if pkce == "auto" and not use_pkce and not _redeems(minter, chosen.id, chosen.redirect_uri,
                                                        with_pkce=False):
        raise SetupError(f"{desc.name}: a fresh code redeemed by {chosen.id} is refused with and "
                         "without PKCE: nothing could be won in a race (check the description)")

    def mint(i: int) -> dict[str, Any]:
        if not use_pkce:
            minted[i] = {"code": minter.mint_code(chosen.id), "verifier": None}
            return minted[i]
        verifier = rfc7636.new_verifier()
        code = minter.mint_code(chosen.id, challenge=rfc7636.s256_challenge(verifier), method="S256")
        minted[i] = {"code": code, "verifier": verifier}
        return minted[i]

    committed_before = _count_tokens(desc)
    spec = RaceSpec(url="", target=str(desc.path), pepper=None, seed="", codes=codes, racers=racers,
                    client=chosen.id, redirect_uri=chosen.redirect_uri, kind="http")
    won: dict[int, list[dict[str, str]]] = {}
    try:
        report = race_processes(spec, processes=processes or default_processes(racers),
                                progress=progress, timeout_s=timeout_s, mint=mint, won=won)
    except RaceInterrupted as stopped:
        _describe_http(stopped.report, desc, chosen.id, spec, minter, minted, won, committed_before,
                       probe=False)
        minter.close()
        raise
    _describe_http(report, desc, chosen.id, spec, minter, minted, won, committed_before, probe=True)
    report.stats["pkce"] = "S256" if use_pkce else "none"
    minter.close()
    return report


def _redeems(minter: Any, client: str, redirect_uri: str, *, with_pkce: bool) -> bool:
    """Whether one fresh code (with an S256 pair, or without PKCE) is redeemed: the probe of ``auto``."""
    from harness import rfc7636
    from harness.errors import OAuthError

    verifier = rfc7636.new_verifier() if with_pkce else None
    try:
        code = minter.mint_code(client, challenge=rfc7636.s256_challenge(verifier) if verifier else None,
                                method="S256" if verifier else None)
        minter.exchange_code(code, client, redirect_uri, verifier)
    except OAuthError:
        return False
    return True


def _count_tokens(desc: Any) -> int | None:
    """``token_count_sql`` on the description's database, read-only; ``None`` when not described."""
    if not desc.database_url or not desc.token_count_sql:
        return None
    import psycopg

    try:
        with psycopg.connect(desc.database_url, autocommit=True, connect_timeout=5,
                             options="-c default_transaction_read_only=on") as conn:
            row = conn.execute(desc.token_count_sql.encode()).fetchone()
    except psycopg.Error as exc:
        raise SetupError(f"{desc.name}: token_count_sql failed: {str(exc).strip().splitlines()[0]}") from None
    return int(row[0]) if row else 0


def _describe_http(report: RaceReport, desc: Any, client: str, spec: RaceSpec, minter: Any,
                   minted: dict[int, dict[str, Any]], won: dict[int, list[dict[str, str]]],
                   committed_before: int | None, *, probe: bool) -> None:
    """Settings, double-won codes, and what a replay and a probe say about the winners' tokens."""
    from harness.errors import OAuthError

    double = [row for row in report.winners.evidence if row["problem"] == "won more than once"]
    # Counted before the probes below, which refresh (and so commit tokens) themselves.
    committed_after = _count_tokens(desc) if committed_before is not None else None
    after: dict[str, Any] = {}
    if probe:
        replayed = refused = active = probed = refreshable = 0
        for i, pair in sorted(minted.items()):
            if i not in won:
                continue
            replayed += 1
            try:
                minter.exchange_code(pair["code"], client, spec.redirect_uri, pair["verifier"])
            except OAuthError:
                refused += 1
            for tokens in {t["access_token"]: t for t in won[i]}.values():
                probed += 1
                if "introspect" in {c.value for c in minter.capabilities}:
                    with contextlib.suppress(OAuthError):
                        active += minter.introspect_access_token(tokens["access_token"]) is not None
                if tokens.get("refresh_token"):
                    try:
                        minter.refresh(tokens["refresh_token"], client)
                        refreshable += 1
                    except OAuthError:
                        pass
        after = {"codes_replayed": replayed, "replays_refused": refused,
                 "winning_token_sets": probed,
                 "access_tokens_active_after_replay": active if minter.capabilities else None,
                 "refresh_tokens_usable_after_replay": refreshable}
    report.stats.update({
        "target": str(desc.path),
        "server": desc.name,
        "server_concurrency": desc.concurrency,
        "strategy": "server",
        "isolation": "server",
        "operation": "exchange",
        "racers": spec.racers,
        "codes": spec.codes,
        "retry_serialization": 0,
        "double_won": [{"code": row["code"], "digest": "-", "wins": row["wins"]}
                       for row in sorted(double, key=lambda r: int(r["code"]))],
        "no_winner": [{"code": row["code"], "digest": "-", "wins": 0}
                      for row in report.winners.evidence if row["problem"] == "no winner"],
        "after_race": after,
        "tokens_returned": report.winners.summary.get("distinct_token_sets", 0),
        "tokens_committed": (committed_after - committed_before
                             if committed_after is not None and committed_before is not None else None),
    })


#: Below this fraction of codes with ≥ 2 attempts in flight at once, a run did not race.
MIN_RACED_FRACTION = 0.9


def verdict(report: RaceReport, *, min_raced: float = MIN_RACED_FRACTION) -> str:
    """``pass``, or why not: ``double win``, ``no winner``, ``incomplete``, ``no race`` or ``nothing won``.

    A run in which the racers did not overlap proves nothing, so it never
    passes; nor does one in which no attempt was won (e.g. a target whose
    every call fails indeterminately).
    """
    if report.winners.summary.get("double_wins", 0):
        return "double win"
    if report.stats.get("incomplete"):
        # Before "no winner": a racer that died took its last ops with it, so a code it won may
        # look unwon. A double win stands whatever happened (two ok ops are proof).
        return "incomplete"
    if report.winners.summary.get("no_winner", 0):
        return "no winner"
    if not report.winners.summary.get("wins", 0):
        return "nothing won"
    if report.overlap.summary.get("raced_fraction", 0.0) < min_raced:
        return "no race"
    if int(report.stats.get("server_concurrency", 2)) <= 1:
        # The racers overlapped on the wire, but a server that runs one request at a time
        # serialises them: nothing raced where it matters, so a "pass" would prove nothing.
        return "inconclusive"
    return "pass"
