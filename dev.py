#!/usr/bin/env python3
"""The project's commands, with nothing but Python 3.11+ and git: ``python3 dev.py run|test|lab|...``.

Each command creates ``.venv`` and installs the project into it first
(again only when ``pyproject.toml`` changes).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".claimcheck-installed"
DEMO_PEPPER = "claimcheck-demo-pepper"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"claimcheck needs Python 3.11+, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("installing claimcheck and its dependencies into .venv", flush=True)
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[all]"], check=True)
    STAMP.write_text(digest)


def env() -> dict[str, str]:
    e = dict(os.environ)
    # The demo and the tests set a pepper explicitly; a deployment must bring its own.
    e.setdefault("HARNESS_AT_REST_PEPPER", DEMO_PEPPER)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("MPLBACKEND", "Agg")
    return e


def sh(*args: str) -> int:
    """Run a command; Ctrl-C and SIGTERM reach it and dev.py waits for it to clean up.

    ``subprocess.run`` would kill the child 0.25 s after a Ctrl-C, before it
    could stop its racers, remove its rows or stop the embedded server.
    """
    print("+", " ".join(args), flush=True)
    proc = subprocess.Popen(args, cwd=ROOT, env=env())

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # The terminal sent SIGINT to the whole group: the child has it too. Give it
                # time to end cleanly, then make sure it ends.
                try:
                    return proc.wait(timeout=30)
                except (subprocess.TimeoutExpired, KeyboardInterrupt):
                    proc.terminate()
                    try:
                        return proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_run(extra: list[str]) -> int:
    """The main job: scan faithful, hardened and naive side by side, then race faithful and naive.

    Exits 0 only when every target behaves as expected (``harness demo``).
    """
    return sh(str(BIN / "harness"), "demo", *extra)


def cmd_lint(extra: list[str]) -> int:
    return sh(str(BIN / "ruff"), "check", ".") or sh(str(BIN / "mypy"))


def cmd_test(extra: list[str]) -> int:
    """Lint, type-check, then every test (unit, integration, notebooks, Locust)."""
    status = cmd_lint([])
    if status:
        return status
    status = sh(str(BIN / "python"), "-m", "pytest", *extra)
    if status == 5:
        print("pytest collected no tests: that is a failure, not a pass", file=sys.stderr)
        return 1
    if extra:
        # Arguments select tests; the notebook suite runs with the full test run.
        return status
    return cmd_notebooks([]) or status


NBVAL = ["--nbval", "notebooks/", "--nbval-sanitize-with", "notebooks/sanitize.cfg", "--nbval-current-env",
         "-p", "no:cacheprovider"]


def ensure_kernel() -> None:
    """The notebooks' kernelspec ``python3`` must be this venv's ipykernel."""
    if not (VENV / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").exists():
        subprocess.run([str(BIN / "python"), "-m", "ipykernel", "install", "--sys-prefix"],
                       check=True, stdout=subprocess.DEVNULL)


def cmd_notebooks(extra: list[str]) -> int:
    """Strict nbval over notebooks/: every cell re-run, outputs compared after sanitising."""
    ensure_kernel()
    status = sh(str(BIN / "python"), "-m", "pytest", *NBVAL, *extra)
    if status == 5:
        print("nbval collected no notebooks: that is a failure, not a pass", file=sys.stderr)
        return 1
    return status


def cmd_lab(extra: list[str]) -> int:
    """JupyterLab on notebooks/ with the embedded database running (``harness lab``)."""
    ensure_kernel()
    return sh(str(BIN / "harness"), "lab", *extra)


COMMANDS = {"run": cmd_run, "test": cmd_test, "lint": cmd_lint, "lab": cmd_lab,
            "notebooks": cmd_notebooks}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    ensure_venv()
    try:
        return COMMANDS[sys.argv[1]](sys.argv[2:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
