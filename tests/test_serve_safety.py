"""``harness serve`` as a process: what it prints, how it fails, and how it ends.

Each test starts ``harness serve`` on a free loopback port with its own log
files and waits for it with a deadline. What they pin down:

* no raw code or token in its output, even with ``-v`` and ``--access-log``,
  while the faithful target's replay warning is still there (fingerprinted);
* a lost database is a quick 503 ``temporarily_unavailable``, never a hang,
  and the first request after the database returns succeeds;
* ``--workers N``: the workers exit when their supervisor is killed;
* Slowloris: connections that never finish their request head, and bodies
  that trickle, are cut after ``--read-timeout`` seconds;
* bad setup is exit status 2 and one line on stderr, never a traceback.

The time bounds asserted are hang guards (generous, the machine is noisy),
not benchmarks; the figures measured are in the README.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import pytest
from conftest import REDIRECT, embedded_env, free_port, harness_serve, interrupt

import harness
from harness.database import Database
from harness.embedded import EmbeddedServer, Lease
from harness.redact import fingerprint
from harness.repository import AuthCodeParams
from harness.targets import load_target
from harness.testing.plugin import CLIENT, TEST_PEPPER, USER

HARNESS = str(Path(sys.executable).with_name("harness"))
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: How long a server may take to answer its first /healthz (cluster start included).
READY_TIMEOUT_S = 60.0




def server_env(*, data_dir: Path | None = None, url: str | None = None,
               pepper: str | None = TEST_PEPPER) -> dict[str, str]:
    """The environment of a ``harness serve``: its own embedded cluster in ``data_dir``, or ``url``."""
    if data_dir is not None:
        env = embedded_env(data_dir)
    else:
        env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
        assert url is not None
        env["HARNESS_DATABASE_URL"] = url
    env.pop("HARNESS_TARGET", None)
    env.pop("HARNESS_AT_REST_PEPPER", None)
    if pepper is not None:
        env["HARNESS_AT_REST_PEPPER"] = pepper
    return env


def exchange_body(code: str) -> str:
    return urlencode({"grant_type": "authorization_code", "code": code, "client_id": CLIENT,
                      "redirect_uri": REDIRECT})


def store(db: Database, code: str) -> None:
    db.ensure_party(CLIENT, USER)
    load_target("faithful", db, pepper=TEST_PEPPER).store_authorization_code(AuthCodeParams(
        code=code, client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope="openid"))


# -- 1. no secret in the output ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_verbose_serve_prints_no_raw_code_or_token(workers: int, pg_data_dir: Path, tmp_path: Path) -> None:
    code = "raw-code-" + secrets.token_hex(8)
    with harness_serve("--target", "faithful", "--access-log", "--workers", str(workers),
                       env=server_env(data_dir=pg_data_dir), logs=tmp_path / "logs",
                       options=("-v",)) as srv, \
            harness.connect(data_dir=pg_data_dir) as db:
        store(db, code)
        first = httpx.post(f"{srv.base}/token", content=exchange_body(code), headers=FORM, timeout=10)
        assert first.status_code == 200, first.text
        tokens = first.json()
        replay = httpx.post(f"{srv.base}/token", content=exchange_body(code), headers=FORM, timeout=10)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        # a client that (wrongly) puts its secrets in the query string: the access log drops it
        httpx.post(f"{srv.base}/token?code={code}&client_secret=qs-secret-42", content=exchange_body(code),
                   headers=FORM, timeout=10)
        srv.stop()
    text = srv.output()
    for secret in (code, tokens["refresh_token"], tokens["access_token"], "qs-secret-42"):
        assert secret not in text
    # the seed's replay warning is there, its code fingerprinted (harness.logs.FieldsFormatter)
    assert "Authorization code replay detected" in text
    assert f"code={fingerprint(code)}" in text
    access = [line for line in text.splitlines() if '"POST /token' in line]
    assert len(access) == 3, text
    assert all("?" not in line and "grant_type" not in line for line in access)
    assert "Traceback" not in text


# -- 3. a lost database --------------------------------------------------------------------------


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


@pytest.mark.slow
def test_a_lost_database_is_a_quick_503_and_its_return_is_served(pg_data_dir: Path, tmp_path: Path) -> None:
    cluster = EmbeddedServer(pg_data_dir)
    lease: Lease | None = None
    unknown = exchange_body("never-issued")
    with harness_serve(env=server_env(data_dir=pg_data_dir), logs=tmp_path / "logs") as srv:
        with harness.connect(data_dir=pg_data_dir) as db:  # the server's lease keeps the cluster up
            db.ensure_party(CLIENT, USER)
        try:
            with httpx.Client(base_url=srv.base, timeout=30) as http:
                assert http.post("/token", content=unknown, headers=FORM).status_code == 400
                # A restart between two requests: every pooled connection is dead, and the pool's
                # check on checkout replaces it instead of failing the request that drew it.
                cluster.restart()
                resp, took = timed(lambda: http.post("/token", content=unknown, headers=FORM))
                print(f"first /token after a restart: {resp.status_code} in {took:.2f} s")
                assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text

                cluster._stop()

                resp, took = timed(lambda: http.post("/token", content=unknown, headers=FORM))
                print(f"first /token with the database down: {resp.status_code} in {took:.2f} s")
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"] == "temporarily_unavailable"
                assert int(resp.headers["retry-after"]) > 0
                assert resp.headers["cache-control"] == "no-store"
                assert took < 8

                resp, took = timed(lambda: http.get("/healthz"))
                print(f"/healthz with the database down: {resp.status_code} in {took:.2f} s")
                assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
                assert took < 8

            def one(_: int) -> tuple[int, float]:
                started = time.monotonic()
                r = httpx.post(f"{srv.base}/token", content=unknown, headers=FORM, timeout=30)
                return r.status_code, time.monotonic() - started

            started = time.monotonic()
            with ThreadPoolExecutor(60) as pool:
                answers = list(pool.map(one, range(60)))
            total = time.monotonic() - started
            print(f"60 concurrent /token with the database down: all answered in {total:.2f} s "
                  f"(slowest {max(t for _, t in answers):.2f} s)")
            assert {status for status, _ in answers} == {503}
            assert total < 20

            _, started_cluster, lease = cluster.acquire()
            assert started_cluster
            with httpx.Client(base_url=srv.base, timeout=30) as http:
                resp, took = timed(lambda: http.post("/token", content=unknown, headers=FORM))
                print(f"first /token after the database returned: {resp.status_code} in {took:.2f} s")
                assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
                assert http.get("/healthz").status_code == 200
            srv.stop()
        finally:
            srv.stop()
            if lease is not None:
                cluster.release(lease)
            cluster._stop()
    assert "Traceback" not in srv.output()


# -- 4. workers die with their supervisor -------------------------------------------------------


def worker_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The uvicorn workers of a ``harness serve`` (multiprocessing's spawned children)."""
    found = []
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


def alive(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie waiting for its reaper has exited)."""
    living = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.append(proc)
    return living


@pytest.mark.slow
def test_workers_exit_when_their_supervisor_is_killed(database: Database, tmp_path: Path) -> None:
    with harness_serve("--workers", "2", env=server_env(url=database.url), logs=tmp_path / "logs") as srv:
        supervisor = psutil.Process(srv.proc.pid)
        deadline = time.monotonic() + 30
        while len(workers := worker_processes(supervisor)) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        try:
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(timeout=10)
            killed = time.monotonic()
            while alive(workers) and time.monotonic() - killed < 15:
                time.sleep(0.05)
            took = time.monotonic() - killed
            print(f"workers gone {took:.2f} s after the supervisor's SIGKILL")
            assert alive(workers) == [], f"workers still serving {took:.1f} s after the supervisor died"
            with pytest.raises(ConnectionRefusedError), \
                    socket.create_connection(("127.0.0.1", srv.port), timeout=2):
                pass
        finally:
            for worker in alive(workers):  # only the workers this test started, by pid
                worker.kill()


# -- 5. Slowloris --------------------------------------------------------------------------------


def wait_closed(socks: list[socket.socket], deadline: float) -> dict[int, tuple[float, bytes]]:
    """Read every socket until the server closes it: ``{index: (seconds, bytes received)}``."""
    started = time.monotonic()
    received = {i: b"" for i in range(len(socks))}
    closed: dict[int, tuple[float, bytes]] = {}
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                i = key.data
                try:
                    chunk = socks[i].recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    chunk = b""
                if chunk:
                    received[i] += chunk
                    continue
                closed[i] = (time.monotonic() - started, received[i])
                sel.unregister(socks[i])
    return closed


@pytest.mark.slow
def test_slow_request_heads_are_closed_and_service_goes_on(database: Database, tmp_path: Path) -> None:
    read_timeout = 2.0
    partial = [b"", b"POST /tok", b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: appl"]
    with harness_serve("--read-timeout", str(read_timeout), env=server_env(url=database.url),
                 logs=tmp_path / "logs") as srv:
        socks = []
        try:
            for i in range(50):
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                socks.append(sock)
                if partial[i % 3]:
                    sock.sendall(partial[i % 3])
            # the server still answers while the 50 hang
            assert httpx.get(f"{srv.base}/healthz", timeout=5).status_code == 200
            closed = wait_closed(socks, time.monotonic() + read_timeout + 10)
        finally:
            for sock in socks:
                sock.close()
        slowest = max((t for t, _ in closed.values()), default=float("nan"))
        print(f"{len(closed)}/50 slow connections closed by the server, the last after {slowest:.2f} s")
        assert len(closed) == 50
        assert slowest < read_timeout + 8
        for i, (took, data) in closed.items():
            assert took > read_timeout / 2  # the deadline closed them, not a parse error
            # a connection that said something gets a 408 first (RFC 9110 §15.5.9)
            assert data.startswith(b"HTTP/1.1 408 ") if partial[i % 3] else data == b""
        assert httpx.get(f"{srv.base}/healthz", timeout=5).status_code == 200


def trickle(sock: socket.socket, head: bytes, drip: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``head``, then a byte of ``drip`` every 0.2 s; (seconds, reply) once the server closes."""
    started = time.monotonic()
    sock.sendall(head)
    sock.settimeout(0.2)
    reply = b""
    for byte in drip:
        if time.monotonic() - started > limit_s:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # the server closed while we dripped
            break
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        reply += chunk
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            reply += chunk
    return time.monotonic() - started, reply


@pytest.mark.slow
def test_trickling_heads_and_bodies_are_cut(database: Database, tmp_path: Path) -> None:
    read_timeout = 2.0
    with harness_serve("--read-timeout", str(read_timeout), env=server_env(url=database.url),
                 logs=tmp_path / "logs") as srv:
        head = (b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 400\r\n\r\ngrant_type=")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            took, reply = trickle(sock, head, b"a" * 400, limit_s=read_timeout + 10)
        print(f"trickled body cut after {took:.2f} s")
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert b"connection: close" in reply.lower()
        assert took < read_timeout + 8

        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            took, reply = trickle(sock, b"POST /token HTTP/1.1\r\n", b"X-Slow: " + b"a" * 400,
                                  limit_s=read_timeout + 10)
        print(f"trickled head cut after {took:.2f} s")
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert took < read_timeout + 8


# -- 7. bad setup: exit 2, one line ----------------------------------------------------------------


def assert_setup_error(proc: subprocess.CompletedProcess[bytes], needle: str) -> None:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert needle in lines[0], err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([b"serve", b"--target", b"nope"], "unknown target"),
        ([b"serve", b"--workers", b"0"], "--workers"),
        ([b"serve", b"--port", b"70000"], "--port"),
        ([b"serve", b"--port", b"-1"], "--port"),
        ([b"serve", b"--host", b"\xff"], "not valid UTF-8"),
        ([b"serve", b"--host", b"bad\xffhost.example"], "not valid UTF-8"),
        ([b"serve", b"--host", b"192.0.2.1"], "cannot listen on 192.0.2.1:"),  # TEST-NET-1: not ours
        ([b"serve", b"--read-timeout", b"0"], "--read-timeout"),
        ([b"serve", b"--read-timeout", b"nan"], "--read-timeout"),
    ],
)
def test_bad_setup_is_exit_2_and_one_line(database: Database, argv: list[bytes], needle: str) -> None:
    if b"--port" not in argv:  # never the default port 8000: something else may hold it
        argv = [*argv, b"--port", str(free_port()).encode()]
    proc = subprocess.run([HARNESS.encode(), *argv], env=server_env(url=database.url), capture_output=True,
                          timeout=60)
    assert_setup_error(proc, needle)


def test_no_pepper_is_exit_2_and_one_line(database: Database) -> None:
    proc = subprocess.run([HARNESS, "serve", "--port", str(free_port())],
                          env=server_env(url=database.url, pepper=None), capture_output=True, timeout=60)
    assert_setup_error(proc, "HARNESS_AT_REST_PEPPER")


def test_a_port_in_use_is_exit_2_and_one_line(database: Database) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run([HARNESS, "serve", "--port", port], env=server_env(url=database.url),
                              capture_output=True, timeout=60)
    assert_setup_error(proc, "cannot listen on 127.0.0.1:")


def test_port_0_serves_on_a_free_port_named_in_the_start_line(database: Database, tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with open(err, "wb") as sink:
        proc = subprocess.Popen([HARNESS, "serve", "--port", "0"], env=server_env(url=database.url),
                                stdout=subprocess.DEVNULL, stderr=sink, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (match := re.search(r"POST http://127\.0\.0\.1:(\d+)/token", err.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        port = int(match.group(1))
        assert port != 0
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
    finally:
        interrupt(proc, timeout=20)
