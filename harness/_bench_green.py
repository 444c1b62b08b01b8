"""One process of ``harness bench``'s ``green`` path: the repository path, many clients per process.

Started as ``python -c "<gevent monkey.patch_all()>; …"`` (gevent patched before psycopg is
imported, so psycopg's waits yield to the other greenlets), with a JSON spec on stdin. Each
greenlet is one client with its own connection, calling the faithful target's real
``validate_authorization_code`` (or ``exchange_code``) on its own codes, unchanged; one process
per core keeps all of them in flight, as pgbench's ``-j`` threads do for its clients. Protocol:
the child prints ``ready`` once connected, waits for ``go`` on stdin, then prints one JSON line
``{"ok", "errors", "elapsed", "note", "latencies_us"}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main() -> int:
    import gevent

    from harness.database import Database
    from harness.race import race_code
    from harness.targets import load_target

    spec: dict[str, Any] = json.loads(sys.stdin.readline())
    slices: list[list[int]] = spec["slices"]
    db = Database(spec["url"], pool_size=len(slices) + 1, pool_timeout_s=30)
    target = load_target("faithful", db, pepper=spec["pepper"])
    client, redirect, seed = spec["client"], spec["redirect_uri"], spec["seed"]

    def warm() -> None:
        with db.write_pool.connection(), db.read_pool.connection():
            gevent.sleep(0.05)  # hold both, so every greenlet's connections exist before the clock

    gevent.joinall([gevent.spawn(warm) for _ in slices], timeout=60)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    deadline = time.monotonic() + float(spec["duration_s"])
    counts = {"ok": 0, "errors": 0}
    first_error: list[str] = []
    ran_out = [False]
    latencies: list[int] = []
    call = target.exchange_code if spec["operation"] == "exchange" else target.validate_authorization_code

    def client_loop(indices: list[int]) -> None:
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

    started = time.monotonic()
    gevent.joinall([gevent.spawn(client_loop, s) for s in slices], timeout=float(spec["duration_s"]) + 60)
    elapsed = time.monotonic() - started
    notes = ["ran out of codes" if ran_out[0] else "",
             f"{counts['errors']} refused, first: {first_error[0]}" if first_error else ""]
    print(json.dumps({"ok": counts["ok"], "errors": counts["errors"], "elapsed": elapsed,
                      "note": "; ".join(filter(None, notes)), "latencies_us": latencies[::10]}),
          flush=True)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
