"""A racer process: ``python -m harness._racer``, driven by ``harness.race`` over its stdin and stdout.

It rebuilds the target from a picklable spec, runs one thread per racer and,
for every code, tells the parent when all its racers stand at the barrier
(``("at", i)``) and releases them when the parent says ``("go", i)``. The
barrier lives in the parent, so a racer process that dies (a SIGKILL, a
crash) can never leave the others waiting on a lock it held: the parent sees
its pipe close and ends the race with a report.

The process dies with its parent (Linux ``PR_SET_PDEATHSIG``) and sits in a
session of its own, so a terminal's Ctrl-C reaches only the parent, which
stops the racers and reports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import IO, Any

_HEADER = struct.Struct("!I")


def send(stream: IO[bytes], lock: threading.Lock, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        stream.write(_HEADER.pack(len(data)) + data)
        stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    """``size`` bytes, or ``None`` at end of stream: a raw pipe may return a message in pieces."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next message, or ``None`` at end of stream."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    data = _read_exactly(stream, size)
    if data is None:
        return None
    # Only our own parent writes to this private pipe: unpickling it trusts nothing foreign.
    message: tuple[Any, ...] = pickle.loads(data)
    return message


def _die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux); elsewhere the parent's pipe EOF ends us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main() -> int:
    from harness import green

    green.install()  # racers as greenlets (HARNESS_RACERS=gevent): the cheaper psycopg wait
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates an interrupt
    # The protocol owns the original stdout; anything the target prints goes to stderr.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    lock = threading.Lock()
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    # The targets warn on every lost race: formatting 15 events per code costs client CPU, and
    # nobody reads them here (the scan judges a target's logs, not the race).
    logging.getLogger("harness").setLevel(logging.ERROR)
    logging.getLogger("harness").propagate = False
    first = receive(proto_in)
    if first is None or first[0] != "spec":
        return 2
    spec, racer_ids = first[1], first[2]
    try:
        run(spec, racer_ids, proto_in, proto_out, lock)
    except BaseException as exc:  # report, never a traceback on the parent's terminal
        try:
            send(proto_out, lock, ("error", f"racer process failed: {type(exc).__name__}: {exc}"))
            send(proto_out, lock, ("done",))
        except OSError:
            pass
        return 1
    return 0


def run(spec: Any, racer_ids: list[int], proto_in: IO[bytes], proto_out: IO[bytes],
        lock: threading.Lock) -> None:
    from psycopg import conninfo

    from harness.database import Database
    from harness.history import Op, OpFields, op_fields
    from harness.race import attempt, is_serialization_failure, race_code
    from harness.targets import load_target

    db: Database | None = None
    try:
        if spec.kind == "http":
            target = load_target(spec.target, None)  # an endpoint description: no database
        else:
            url = conninfo.make_conninfo(spec.url, application_name=spec.app_name)
            # One connection per racer thread, kept: a pool checkout costs more client CPU than
            # the statement, and the CPU is the server's too on a small machine. No check on
            # checkout: a connection the nemesis killed must fail its attempt (an indeterminate
            # op, as a real client would see it), not be quietly replaced.
            db = Database(url, pinned=True)
            target = load_target(spec.target, db, pepper=spec.pepper, **spec.target_options())
            with db.write_pool.connection():
                pass  # the database answers: a setup error now, not 16 failed attempts later
    except Exception as exc:
        send(proto_out, lock, ("error", f"racer setup failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}"))
        send(proto_out, lock, ("done",))
        return

    payloads: dict[int, Any] = {}
    call: Callable[[int], Any]
    if spec.kind == "http":
        def call(i: int) -> Any:
            minted = payloads[i]
            tokens = target.exchange_code(minted["code"], spec.client, spec.redirect_uri,
                                          minted.get("verifier"))
            # The raw tokens go to the parent alone (over this private pipe), to be probed after
            # the race; the history keeps only their fingerprints.
            send(proto_out, lock, ("won", i, {"access_token": tokens.access_token,
                                              "refresh_token": tokens.refresh_token}))
            return tokens
    elif spec.operation == "exchange":
        def call(i: int) -> Any:
            return target.exchange_code(race_code(spec.seed, i), spec.client, spec.redirect_uri)
    else:
        def call(i: int) -> Any:
            return target.validate_authorization_code(race_code(spec.seed, i), spec.client,
                                                      spec.redirect_uri)

    # Plain tuples, not Op objects: smaller and quicker to pickle, and the parent rebuilds each op
    # once anyway, sharing its strings and value dicts (``OpInterner``).
    buffer: list[OpFields] = []
    buffer_lock = threading.Lock()
    stop = threading.Event()

    def record(op: Op) -> None:
        fields = op_fields(op)
        with buffer_lock:
            buffer.append(fields)

    def flush() -> None:
        with buffer_lock:
            batch = buffer[:]
            buffer.clear()
        if batch:
            send(proto_out, lock, ("ops", batch))

    def keep_flushing() -> None:
        # A racer stuck in an attempt flushes nothing: its invoke must still reach the parent.
        while not stop.wait(0.1):
            flush()

    local = len(racer_ids)
    arrive = threading.Barrier(local + 1)
    release = threading.Barrier(local + 1)

    def racer(process: int) -> None:
        # This racer's own connection (or keep-alive HTTP connection), opened before the first
        # barrier, as pgbench connects before its clock starts.
        warm_up = getattr(target, "warm_up", None)
        if callable(warm_up):
            warm_up()
        if db is not None:
            try:
                with db.write_pool.connection():
                    pass
            except Exception:  # the first attempt meets the same fault and records it
                pass
        for i in range(spec.codes):
            try:
                arrive.wait()
                release.wait()
            except threading.BrokenBarrierError:
                return
            for n in range(1 + spec.retry_serialization):
                _, done = attempt(process, spec.operation, {"code": i, "attempt": n},
                                  partial(call, i), record)
                if not is_serialization_failure(done):
                    break

    threads = [threading.Thread(target=racer, args=(p,), daemon=True) for p in racer_ids]
    for t in threads:
        t.start()
    threading.Thread(target=keep_flushing, daemon=True).start()
    send(proto_out, lock, ("ready",))
    started = time.monotonic()
    cpu = time.process_time()
    try:
        for i in range(spec.codes):
            arrive.wait()
            # No flush here: the barrier's round trip is the race's critical path; the ops follow
            # within 0.1 s from keep_flushing (and all of them at the end).
            send(proto_out, lock, ("at", i))
            message = receive(proto_in)
            if message is None or message[0] != "go" or message[1] != i:
                break  # stop, or the parent is gone
            payloads[i] = message[2] if len(message) > 2 else None
            release.wait()
        else:
            for t in threads:
                t.join()
    finally:
        arrive.abort()
        release.abort()
        stop.set()
        flush()
        # Seconds raced and this process's CPU over them: the parent adds up where the time went.
        send(proto_out, lock, ("done", time.monotonic() - started, time.process_time() - cpu))
    # Racers still inside an attempt (a hung target) are daemon threads: the parent kills us.
    if db is not None:
        db.close()
    close = getattr(target, "close", None)
    if callable(close):
        close()


if __name__ == "__main__":
    sys.exit(main())
