"""Start the Authlib server under gunicorn for a test, and stop all of it afterwards.

::

    handle = start_authlib_server(db_url, workers=2, threads=2, claim="documented", secret=s)
    with handle as base_url:
        ...

What a client of the running server needs (``base_url`` is ``http://127.0.0.1:<port>``):

- login: ``POST /login`` form ``username=alice`` → 200 and the Flask ``session``
  cookie (with ``?next=/path`` → 302 there). ``GET /login`` is the form.
- authorize: ``GET /oauth/authorize?response_type=code&client_id=…&redirect_uri=
  https://client.example/cb&scope=openid+profile&state=…&code_challenge=…&
  code_challenge_method=S256`` with the cookie → 302 to ``redirect_uri?code=…&state=…``
  (consent is automatic); without the cookie → 302 to ``/login?next=…``.
- token: ``POST /oauth/token`` (``authorization_code`` with ``code``,
  ``redirect_uri``, ``code_verifier``; ``refresh_token`` with ``refresh_token``,
  rotating: each refresh returns a new refresh token and revokes the old one).
- clients (redirect URI ``https://client.example/cb``, scope ``openid profile``):
  ``claimcheck-a`` ``client_secret_basic`` and ``claimcheck-b`` ``client_secret_post``,
  both with ``secret``; ``claimcheck-public`` ``none`` (``client_id`` in the form).
- introspection (RFC 7662): ``POST /oauth/introspect`` form ``token=…``
  [``token_type_hint``], authenticated as a confidential client (basic or post).
- revocation (RFC 7009): ``POST /oauth/revoke``, same client authentication.
- protected resource: ``GET /api/me`` with ``Authorization: Bearer …`` (scope
  ``profile``) → 200 ``{"id": …, "username": "alice"}``, else 401.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

TESTS_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Variables the suite never hands to a child (the plugin scrubs them too): the server gets its URL only.
_SCRUBBED = ("HARNESS_DATABASE_URL", "DATABASE_URL")


class ServerHandle:
    """One gunicorn master and its workers, in a process group of their own.

    ``with handle as base_url`` starts it and waits (bounded) until it serves
    requests; leaving the block terminates the whole group and waits for it.
    """

    def __init__(self, database_url: str, *, workers: int, threads: int, claim: str, secret: str) -> None:
        self._args = (workers, threads)
        self._env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        self._env.update(
            AUTHLIB_DATABASE_URL=database_url,
            AUTHLIB_CLAIM=claim,
            AUTHLIB_CLIENT_SECRET=secret,
            PYTHONUNBUFFERED="1",
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="authlib-server-")
        self.log_path = Path(self._tmp.name) / "gunicorn.log"
        self.base_url = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> str:
        workers, threads = self._args
        # A listening address nobody else can take between our choice and gunicorn's bind: bind
        # port 0 here and hand the bound socket itself to gunicorn (``--bind fd://N``).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            cmd = [
                sys.executable, "-m", "gunicorn",
                "--chdir", str(TESTS_DIR),
                "-w", str(workers), "--threads", str(threads), "-k", "gthread",
                "--bind", f"fd://{sock.fileno()}",
                # Seed once in the master, then fork: every worker is ready when the port answers.
                "--preload",
                # Racing clients keep their connections open between rounds.
                "--keep-alive", "30",
                "--timeout", "30", "--graceful-timeout", "3",
                "authlib_server.wsgi:app",
            ]
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    cmd, env=self._env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),), start_new_session=True,
                )
        finally:
            sock.close()  # gunicorn holds its own copy
        self.base_url = f"http://127.0.0.1:{port}"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {self._proc.returncode} before serving:\n"
                                       f"{self.log_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.base_url}/login").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not answer within {START_TIMEOUT_S:.0f} s:\n"
                                       f"{self.log_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the process group (master and workers), SIGKILL it if it lingers; wait."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the master leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            # One signal to the group ends the master and its workers alike: none is orphaned.
            proc.wait(timeout=STOP_TIMEOUT_S)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_authlib_server(database_url: str, *, workers: int, threads: int, claim: str,
                         secret: str) -> ServerHandle:
    """A handle for the server; ``with`` it to run it (see the module docstring)."""
    return ServerHandle(database_url, workers=workers, threads=threads, claim=claim, secret=secret)
