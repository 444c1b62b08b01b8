"""One process of ``harness bench``'s ``green`` path: the repository path, many clients per process.

Started as ``python -c "<gevent monkey.patch_all()>; …"`` (gevent patched before psycopg is
imported, so psycopg's waits yield to the other greenlets), with a JSON spec on stdin. Each
greenlet is one client with its own connection, calling the faithful target's real
``validate_authorization_code`` (or ``exchange_code``) on its own codes, unchanged, or, with an
``endpoint``, posting them to the token endpoint of a ``harness serve`` on the same database; one
process per core keeps all of them in flight, as pgbench's ``-j`` threads do for its clients. Protocol:
the child prints ``ready`` once connected, waits for ``go`` on stdin, then prints one JSON line
``{"ok", "errors", "elapsed", "note", "latencies_us", "cpu_s"}`` (``cpu_s``: its CPU on the clock).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

#: How long one token request may take before it counts as an error.
HTTP_TIMEOUT_S = 10.0


def main() -> int:
    import gevent
    import gevent.event
    import httpx

    from harness import green
    from harness.database import Database
    from harness.race import race_code
    from harness.targets import load_target

    green.install()
    spec: dict[str, Any] = json.loads(sys.stdin.readline())
    slices: list[list[int]] = spec["slices"]
    db = Database(spec["url"], pinned=True)  # one connection per greenlet, as pgbench's clients
    target = load_target("faithful", db, pepper=spec["pepper"])
    client, redirect, seed = spec["client"], spec["redirect_uri"], spec["seed"]
    endpoint: str | None = spec.get("endpoint")

    go = gevent.event.Event()
    connected: list[int] = []

    def client_loop(indices: list[int]) -> None:
        call = exchange_over_http(endpoint) if endpoint else exchange_in_process()
        connected.append(1)  # this greenlet's own connection is open: before the clock
        go.wait()
        for k in indices:
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter_ns()
            try:
                call(race_code(seed, k), client, redirect)
                counts["ok"] += 1
            except Exception as exc:  # counted and reported; the bench goes on
                counts["errors"] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            latencies.append((time.perf_counter_ns() - started) // 1000)
        ran_out[0] = True

    counts = {"ok": 0, "errors": 0}
    first_error: list[str] = []
    ran_out = [False]
    latencies: list[int] = []
    redeem = target.exchange_code if spec["operation"] == "exchange" else target.validate_authorization_code

    def exchange_in_process() -> Any:
        with db.write_pool.connection():
            pass  # opens this greenlet's connection now
        return redeem

    def exchange_over_http(base: str) -> Any:
        # RFC 6749 §4.1.3 at a `harness serve` on the same database and pepper; the run's client is
        # public (no secret), so the form names it. One keep-alive connection per greenlet.
        http = httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S)
        http.get("/healthz")

        def post(code: str, client_id: str, redirect_uri: str) -> None:
            answer = http.post("/token", data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": redirect_uri, "client_id": client_id})
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP {answer.status_code} {answer.text[:80]}")

        return post

    clients = [gevent.spawn(client_loop, s) for s in slices]
    connecting = time.monotonic() + 60
    while len(connected) < len(slices) and time.monotonic() < connecting:
        if any(c.dead for c in clients):
            break  # a connection failed: reported below as the client's exception
        gevent.sleep(0.01)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        gevent.killall(clients, timeout=2)
        return 1
    deadline = time.monotonic() + float(spec["duration_s"])
    cpu = time.process_time()
    started = time.monotonic()
    go.set()
    gevent.joinall(clients, timeout=float(spec["duration_s"]) + 60)
    failed = [c.exception for c in clients if c.exception is not None]
    if failed and not first_error:
        counts["errors"] += len(failed)
        first_error.append(f"{type(failed[0]).__name__}: {failed[0]}")
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    notes = ["ran out of codes" if ran_out[0] else "",
             f"{counts['errors']} refused, first: {first_error[0]}" if first_error else ""]
    print(json.dumps({"ok": counts["ok"], "errors": counts["errors"], "elapsed": elapsed,
                      "note": "; ".join(filter(None, notes)), "latencies_us": latencies[::10],
                      "cpu_s": cpu}),
          flush=True)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
