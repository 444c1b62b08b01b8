"""``harness lab``: JupyterLab on notebooks/, the database running and its URL in the kernels' environment."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from harness.database import connect
from harness.errors import SetupError
from harness.settings import Settings

#: The repository's notebooks/ (this file is harness/commands/lab.py).
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "lab", help="start JupyterLab on notebooks/ with the database running",
        description="Start (or reuse) the database, put its URL in HARNESS_DATABASE_URL for the "
                    "kernels and run JupyterLab in notebooks/. Ctrl-C stops JupyterLab and the "
                    "embedded server if this command started it.")
    parser.add_argument("--port", type=int, default=8888, help="JupyterLab's port (default 8888)")
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--token", default=None,
                        help="the server's access token (default: JupyterLab makes one and prints it)")
    parser.add_argument("--notebook-dir", type=Path, default=None,
                        help=f"directory to serve (default {NOTEBOOKS})")
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER,
                        help="after --: more arguments for jupyter lab")
    parser.set_defaults(handler=run)


def lab_command(args: argparse.Namespace, root: Path) -> list[str]:
    """The ``jupyter lab`` command line (this interpreter, so its kernels are this venv's)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
           f"--port={args.port}", "--ServerApp.port_retries=0", f"--ip={args.ip}"]
    if args.no_browser:
        cmd.append("--no-browser")
    if args.token is not None:
        cmd.append(f"--IdentityProvider.token={args.token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; JupyterLab refuses otherwise
    extra = [a for a in args.jupyter_args if a != "--"]
    return cmd + extra


def run(args: argparse.Namespace) -> int:
    root = (args.notebook_dir or NOTEBOOKS).resolve()
    if not root.is_dir():
        raise SetupError(f"no notebook directory at {root}")
    with connect() as db:
        env = dict(os.environ)
        env["HARNESS_DATABASE_URL"] = db.url
        if not Settings.from_env().pepper:
            print("HARNESS_AT_REST_PEPPER is not set: the notebooks use their fixed demo pepper",
                  flush=True)
        print(f"database: {db!r}\nHARNESS_DATABASE_URL={db.url}", flush=True)
        # A session of its own: Ctrl-C in the terminal reaches only this process,
        # which then stops JupyterLab without its "Shutdown this server?" prompt.
        proc = subprocess.Popen(lab_command(args, root), env=env, start_new_session=True)

        def stop(signum: int, frame: FrameType | None) -> None:
            if proc.poll() is None:
                proc.terminate()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = proc.wait()
            while proc.poll() is None:  # pragma: no cover - wait() returns only on exit
                status = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print("JupyterLab stopped" + ("" if db.owns_server else "; the database was left running"),
          flush=True)
    # SIGTERM from our own stop() is a clean shutdown, not a failure.
    if status in (0, -signal.SIGTERM):
        return 0
    print(f"harness lab: jupyter lab exited with status {status}", file=sys.stderr)
    return 2
