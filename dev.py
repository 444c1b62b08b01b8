#!/usr/bin/env python3
"""The project's commands, with nothing but Python 3.11+ and git: ``python3 dev.py run|test|lab|...``.

Each command creates ``.venv`` and installs the project into it first
(again only when ``pyproject.toml`` changes). In the conda environment of
``environment.yml`` (``conda activate claimcheck``), or with
``CLAIMCHECK_USE_ACTIVE_ENV=1``, the commands run in the active environment
instead: no ``.venv``, nothing installed; what it lacks is reported with the
command that installs it. ``CLAIMCHECK_USE_ACTIVE_ENV=0`` always uses ``.venv``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
#: The environment the commands run in: .venv, or the active one (``use_active_env``).
PREFIX = VENV
STAMP = VENV / ".claimcheck-installed"
DEMO_PEPPER = "claimcheck-demo-pepper"
#: The conda environment of environment.yml: when it is active, dev.py uses it instead of .venv.
CONDA_ENV = "claimcheck"
#: 1: use the active environment (the python running dev.py), whatever it is; 0: always .venv.
USE_ACTIVE_ENV = "CLAIMCHECK_USE_ACTIVE_ENV"
#: What each command needs of pyproject.toml, beyond the base dependencies (the extras).
EXTRAS = {"run": (), "lab": ("notebooks",), "notebooks": ("notebooks", "dev"), "lint": ("dev",),
          "test": ("http", "load", "notebooks", "dev")}


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def active_env() -> str | None:
    """Why the commands run in the active environment (``sys.prefix``) rather than .venv, or ``None``.

    ``CLAIMCHECK_USE_ACTIVE_ENV=1`` says so; ``=0`` never. Otherwise: when the conda environment
    ``claimcheck`` (environment.yml) is active and this is its python.
    """
    flag = os.environ.get(USE_ACTIVE_ENV, "").strip().lower()
    if flag in ("0", "no", "false"):
        return None
    if flag in ("1", "yes", "true"):
        return f"{USE_ACTIVE_ENV}={os.environ[USE_ACTIVE_ENV]}"
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix and _same(prefix, sys.prefix) and CONDA_ENV in (
            Path(prefix).name, os.environ.get("CONDA_DEFAULT_ENV")):
        return f"the conda environment {CONDA_ENV!r} is active"
    return None


def _version(text: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def _at_least(have: str, bound: str) -> bool:
    a, b = _version(have), _version(bound)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def requirements(extras: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(name, lower bound)`` of pyproject's dependencies and of ``extras`` (bound ``""`` if none)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"].get(extra, [])
    out = []
    for req in reqs:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([0-9][^,;\s]*))?", req)
        if match:
            out.append((match[1], match[2] or ""))
    return out


def installed_version(name: str) -> str | None:
    """The version of ``name`` installed in the running environment (not the work tree's egg-info)."""
    from importlib import metadata

    where = [p for p in sys.path if p and not _same(p, ROOT)]
    found = next(iter(metadata.distributions(name=name, path=where)), None)
    return None if found is None else str(found.version)


def missing_in_active_env(extras: tuple[str, ...]) -> list[str]:
    """What the running interpreter's environment lacks of the project (and of ``extras``)."""
    lacking = []
    if installed_version("claimcheck") is None:
        lacking.append("claimcheck (this project: not installed)")
    for name, bound in requirements(extras):
        have = installed_version(name)
        if have is None:
            lacking.append(f"{name}>={bound} (not installed)" if bound else f"{name} (not installed)")
        elif bound and not _at_least(have, bound):
            lacking.append(f"{name}>={bound} ({have} installed)")
    return lacking


def use_active_env(command: str, why: str) -> None:
    """Run the commands from ``sys.prefix``; exit 2 with the fix if it lacks something."""
    global BIN, PYTHON, PREFIX
    BIN = Path(sysconfig.get_path("scripts"))
    PYTHON = Path(sys.executable)
    PREFIX = Path(sys.prefix)
    print(f"using the active environment {sys.prefix} ({why}; {USE_ACTIVE_ENV}=0 for .venv)", flush=True)
    lacking = missing_in_active_env(EXTRAS.get(command, ()))
    if not lacking:
        return
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix and _same(prefix, sys.prefix):
        name = os.environ.get("CONDA_DEFAULT_ENV") or Path(prefix).name
        where = f"-n {name}" if name and os.sep not in name else f"-p {prefix}"
        fix = f"conda env update {where} -f {ROOT / 'environment.yml'}"
    else:
        fix = f"{sys.executable} -m pip install -e '{ROOT}[all]'"
    print(f"dev.py: the active environment {sys.prefix} lacks what `python3 dev.py {command}` needs:",
          *(f"  {item}" for item in lacking), "install them with:", f"  {fix}",
          f"or use .venv instead: {USE_ACTIVE_ENV}=0 python3 dev.py {command}",
          sep="\n", file=sys.stderr)
    sys.exit(2)


#: pip's note, once per package, on an index location of its configuration that does not exist.
IGNORED_LOCATION = re.compile(
    r"WARNING: Location '([^']+)' is ignored: it is neither a file nor a directory\.")


def pip_quietly(command: list[str], environ: dict[str, str], missing: set[str]) -> int:
    """Run pip and pass on what it says, except its note, once per package, on an index location of
    the pip configuration that does not exist: those locations are added to ``missing`` instead.
    Returns pip's exit status."""
    done = subprocess.run(command, env=environ, stderr=subprocess.PIPE, text=True, errors="replace",
                          stdin=subprocess.DEVNULL)
    for line in done.stderr.splitlines():
        match = IGNORED_LOCATION.fullmatch(line.strip())
        if match:
            missing.add(match[1].rstrip("/").rsplit("/", 1)[0])
        else:
            print(line, file=sys.stderr)
    sys.stderr.flush()
    return done.returncode


def ensure_venv() -> None:
    """Create .venv and install the project into it, again only when pyproject.toml changes."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists():
        print("pyproject.toml changed: updating .venv (usually under a minute)…", flush=True)
    else:
        print("installing claimcheck and its dependencies into .venv (first run: about 1–2 minutes)…",
              flush=True)
        if os.environ.get("CONDA_PREFIX") and not os.environ.get(USE_ACTIVE_ENV):
            print(f"  (a conda environment is active, but not claimcheck's: dev.py uses .venv; "
                  f"{USE_ACTIVE_ENV}=1 uses the active one)", flush=True)
    # -q: pip says nothing unless something is wrong (warnings and errors still show). setuptools'
    # note on every editable install of a flat layout ("Editable installation. Please be careful
    # with folders…") is information, not a problem: not shown.
    environ = dict(os.environ)
    environ["PYTHONWARNINGS"] = ",".join(
        w for w in (environ.get("PYTHONWARNINGS", ""), "ignore:Editable installation") if w)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    missing: set[str] = set()
    failed = 0
    for step in ([*pip, "--upgrade", "pip"], [*pip, "-e", f"{ROOT}[all]"]):
        failed = failed or pip_quietly(step, environ, missing)
    if missing:
        print(f"  (pip ignored index locations of its configuration that do not exist: "
              f"{', '.join(sorted(missing))})", file=sys.stderr, flush=True)
    if failed:
        print(f"dev.py: installing into {VENV} failed (pip's messages above); nothing was "
              "marked installed, the next run tries again", file=sys.stderr)
        sys.exit(2)
    STAMP.write_text(digest)
    print("installed.", flush=True)


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
    """The main job (``harness demo``): the review of faithful, the port of systemprompt-oauth 0.14.4,
    with its controls (hardened, naive, a race on faithful and naive).

    Exits 0 when the harness behaved as expected on every shipped target and race, which is no
    verdict on the code under review; 1 otherwise; 2 on a setup error.
    """
    return sh(str(BIN / "harness"), "demo", *extra)


def cmd_lint(extra: list[str]) -> int:
    return sh(str(BIN / "ruff"), "check", ".") or sh(str(BIN / "mypy"))


def cmd_test(extra: list[str]) -> int:
    """Lint, type-check, then every test (unit, integration, notebooks, Locust)."""
    status = cmd_lint([])
    if status:
        return status
    status = sh(str(PYTHON), "-m", "pytest", *extra)
    if status == 5:
        print("pytest collected no tests: that is a failure, not a pass", file=sys.stderr)
        return 1
    if extra:
        # Arguments select tests; the notebook suite runs with the full test run.
        return status
    return cmd_notebooks([]) or status


#: Strict nbval over notebooks/. The session's database comes from the plugin harness.testing.nbval and
#: the sanitiser from tests/nbval/: notebooks/ holds the notebooks alone.
NBVAL = ["-p", "harness.testing.nbval", "--nbval", "notebooks/",
         "--nbval-sanitize-with", "tests/nbval/sanitize.cfg", "--nbval-current-env", "-p", "no:cacheprovider"]


def ensure_kernel() -> None:
    """The notebooks' kernelspec ``python3`` must be this venv's ipykernel."""
    if not (PREFIX / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").exists():
        subprocess.run([str(PYTHON), "-m", "ipykernel", "install", "--sys-prefix"],
                       check=True, stdout=subprocess.DEVNULL)


def cmd_notebooks(extra: list[str]) -> int:
    """Strict nbval over notebooks/: every cell re-run, outputs compared after sanitising."""
    ensure_kernel()
    status = sh(str(PYTHON), "-m", "pytest", *NBVAL, *extra)
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
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        print(f"claimcheck needs Python 3.11+, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    why = active_env()
    if why:
        use_active_env(sys.argv[1], why)
    else:
        ensure_venv()
    try:
        return COMMANDS[sys.argv[1]](sys.argv[2:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
