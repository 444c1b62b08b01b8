"""``harness notebook``: re-run a walkthrough with papermill against a target; keep the run as evidence.

Exit status: 0 every notebook ran through; 1 a cell failed (a property the
notebook shows did not hold on the target; the executed notebook is kept as
evidence); 2 a usage or setup error, found before papermill starts where it
can be (an unknown notebook, target or parameter, a parameter of the wrong
type or out of range, an unreachable database or one without the schema, an
unwritable evidence directory) or raised inside the notebook as ``SetupError``.

Secrets never become parameters: papermill writes every parameter into the
executed notebook twice (the injected cell and its metadata). The database
URL (``--database-url`` or ``-p database_url=…``) and the at-rest pepper
(``-p pepper=…``) reach the kernel through its environment instead
(``HARNESS_DATABASE_URL``, ``HARNESS_AT_REST_PEPPER``); the kernel inherits the
environment of this process, and the notebooks read both from there.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import SetupError

if TYPE_CHECKING:
    from harness.database import Database

#: The repository's notebooks/ and out/ (this file is harness/commands/notebook.py).
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "out" / "notebooks"
#: Parameters that carry a secret: passed to the kernel in these environment variables, never
#: written into the executed notebook.
SECRET_PARAMETERS = {"database_url": "HARNESS_DATABASE_URL", "pepper": "HARNESS_AT_REST_PEPPER"}
#: ``ename`` of a failed cell that means "the notebook could not run", not "a property failed".
SETUP_ERRORS = frozenset({"SetupError"})
EXIT_VIOLATED = 1
EXIT_USAGE = 2


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "notebook", help="re-run a notebook with papermill against a target, keep it as evidence",
        description="Execute notebooks/NAME.ipynb with papermill, with the given parameters, and "
                    "write the executed notebook to out/notebooks/. Exit status 1 when a cell fails "
                    "(a property the notebook shows does not hold on the target; the executed "
                    "notebook is the evidence), 2 on a usage or setup error (unknown target or "
                    "parameter, unreachable database, missing schema, unwritable --out, or a "
                    "SetupError inside the notebook). The database URL and the pepper reach the "
                    "kernel through its environment, never as parameters, so the evidence never "
                    "holds a password or the pepper.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="notebook name or number prefix, e.g. 04 or 04_concurrent_claim "
                             "(default: every notebook)")
    parser.add_argument("--target", default=None,
                        help="the notebooks' target parameter (default HARNESS_TARGET or faithful)")
    parser.add_argument("--database-url", default=None,
                        help="the database the notebooks use (default: HARNESS_DATABASE_URL, else the "
                             "embedded server); its schema must exist (harness db migrate). Passed to "
                             "the kernel as HARNESS_DATABASE_URL, never written into the evidence")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the notebook's parameters cell, read as the type of its "
                             "default (racers=16); database_url and pepper go to the kernel's "
                             "environment instead of the notebook")
    parser.add_argument("--out", type=Path, default=OUT, help=f"evidence directory (default {OUT})")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.set_defaults(handler=run)


def notebooks() -> list[Path]:
    """The walkthroughs, in reading order."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise SetupError(f"no notebooks in {NOTEBOOKS}: run harness notebook from a clone of the repository")
    return found


def resolve(names: list[str]) -> list[Path]:
    """Notebook paths for names given as ``04``, ``04_concurrent_claim`` or a path."""
    available = notebooks()
    if not names:
        return available
    chosen = []
    for name in names:
        if Path(name).is_file():
            chosen.append(Path(name).resolve())
            continue
        stem = Path(name).stem
        matches = [p for p in available if p.stem == stem or p.stem.startswith(f"{stem}_")]
        if len(matches) != 1:
            raise SetupError(f"no single notebook matches {name!r}: choose from "
                             f"{', '.join(p.stem for p in available)}")
        chosen.append(matches[0])
    return chosen


@dataclass
class Request:
    """What the command line asks for: plain parameters (raw text) and the secrets for the environment."""

    params: dict[str, str]
    env: dict[str, str]


def parse_params(args: argparse.Namespace) -> Request:
    """``-p KEY=VALUE``, ``--target`` and ``--database-url``, with the secrets set apart.

    Values stay text here; :func:`typed_params` reads each as the type of the
    notebook's default.
    """
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SetupError(f"--param wants KEY=VALUE, got {item!r}")
        params[key] = value
    if args.target is not None:
        params["target"] = args.target
    elif "target" not in params and os.environ.get("HARNESS_TARGET"):
        params["target"] = os.environ["HARNESS_TARGET"]
    if args.database_url is not None:
        given = params.get("database_url")
        if given is not None and given != args.database_url:
            raise SetupError("--database-url and -p database_url name two databases: give one")
        params["database_url"] = args.database_url
    env = {}
    for name, var in SECRET_PARAMETERS.items():
        if name in params:
            env[var] = params.pop(name)
            if not env[var]:
                raise SetupError(f"{name} is empty")
    return Request(params, env)


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters cell of ``notebook``: name → default value."""
    import papermill

    declared = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        try:
            declared[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            declared[name] = None  # an expression: any value is accepted as text
    return declared


def _typed(name: str, raw: str, default: Any) -> Any:
    """``raw`` read as the type of ``default``; a ``SetupError`` naming the parameter if it is not one."""
    if isinstance(default, bool):
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise SetupError(f"parameter {name} wants true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SetupError(f"parameter {name} wants a whole number, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SetupError(f"parameter {name} wants a number, got {raw!r}") from None
    if isinstance(default, (list, dict)):
        try:
            value = json.loads(raw)
        except ValueError:
            raise SetupError(f"parameter {name} wants JSON, got {raw!r}") from None
        if not isinstance(value, type(default)):
            raise SetupError(f"parameter {name} wants a JSON {type(default).__name__}, got {raw!r}")
        return value
    return raw  # a text parameter, or one whose default is None (target names, …)


@dataclass
class Plan:
    """One notebook to run: the parameters papermill injects, and every value its cell will hold."""

    notebook: Path
    params: dict[str, Any]
    values: dict[str, Any]


def plan(notebooks: list[Path], params: Mapping[str, str]) -> list[Plan]:
    """Each notebook's parameters, typed and range-checked, before any kernel starts.

    A parameter no chosen notebook declares is refused (papermill would only
    warn, and the run would silently use the default); one that only some
    declare goes to those.
    """
    from harness.walkthrough import check_parameters

    declared = {nb: declared_parameters(nb) for nb in notebooks}
    names = {name for defaults in declared.values() for name in defaults}
    unknown = sorted(set(params) - names)
    if unknown:
        raise SetupError(f"no chosen notebook has the parameter {', '.join(unknown)}: "
                         f"the parameters are {', '.join(sorted(names - set(SECRET_PARAMETERS)))}")
    plans = []
    for nb, defaults in declared.items():
        given = {k: _typed(k, v, defaults[k]) for k, v in params.items() if k in defaults}
        values = {**defaults, **given}
        check_parameters(**{k: v for k, v in values.items() if k not in SECRET_PARAMETERS})
        plans.append(Plan(nb, given, values))
    return plans


def writable_dir(out: Path) -> None:
    """Create ``out`` if need be and prove a file can be written there (else one ``SetupError`` line)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".harness-notebook-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SetupError(f"cannot write the evidence to {out}: {reason}") from None


def preflight(targets: list[str], env: Mapping[str, str], pepper: str | None) -> Database | None:
    """Reach the database the kernels will use and load each target on it, before papermill starts.

    A database given by URL must be reachable and have the schema (it is
    closed again). The embedded server, when no URL is given, is started here
    and kept until every notebook ran (returned, for the caller to close), so
    the kernels join it instead of each starting and stopping it.
    """
    import harness
    from harness.clock import ManualClock
    from harness.settings import Settings
    from harness.walkthrough import pepper_or_demo

    url = env.get("HARNESS_DATABASE_URL") or Settings.from_env().database_url
    db = harness.connect(url)
    try:
        for target in dict.fromkeys(targets):
            harness.load_target(target, db, pepper=pepper_or_demo(pepper), clock=ManualClock())
    except BaseException:
        db.close()
        raise
    if url:
        db.close()
        return None
    return db


@contextlib.contextmanager
def kernel_environment(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` while the block runs: a kernel started inside inherits it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def evidence_path(out: Path, notebook: Path, params: Mapping[str, Any]) -> Path:
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(params.get("target", "default")))[:40]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return out / f"{notebook.stem}-{label}-{stamp}.ipynb"


def execute(notebook: Path, output: Path, params: dict[str, Any],
            env: Mapping[str, str] | None = None) -> None:
    """Run ``notebook`` into ``output``; raises ``papermill.PapermillExecutionError`` on a failed cell.

    ``env`` is added to the kernel's environment (secrets: never pass them in ``params``).
    """
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    with kernel_environment(env or {}):
        papermill.execute_notebook(str(notebook), str(output), parameters=params,
                                   kernel_name="python3", cwd=str(notebook.parent),
                                   progress_bar=False)


def exit_status(ename: str) -> int:
    """What a failed cell means: 2 when the notebook could not run (``SetupError``), else 1."""
    return EXIT_USAGE if ename in SETUP_ERRORS else EXIT_VIOLATED


def _first_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def run(args: argparse.Namespace) -> int:
    if args.list:
        for path in notebooks():
            print(path.stem)
        return 0
    try:
        import papermill  # noqa: F401  (only to say so early when it is missing)
    except ImportError as exc:
        raise SetupError("papermill is not installed: pip install 'claimcheck[notebooks]'") from exc
    request = parse_params(args)
    plans = plan(resolve(args.names), request.params)
    writable_dir(args.out)
    held = preflight([str(p.values.get("target") or "faithful") for p in plans], request.env,
                     request.env.get("HARNESS_AT_REST_PEPPER"))
    try:
        return run_plans(plans, request.env, args.out)
    finally:
        if held is not None:
            held.close()


def run_plans(plans: list[Plan], env: Mapping[str, str], out: Path) -> int:
    """Execute each plan; 1 if a cell failed, ``SetupError`` (exit 2) if a notebook could not run."""
    import papermill

    status = 0
    for p in plans:
        output = evidence_path(out, p.notebook, p.params)
        started = time.monotonic()
        try:
            execute(p.notebook, output, p.params, env)
        except papermill.PapermillExecutionError as exc:
            evalue = _first_line(exc.evalue)
            if exit_status(exc.ename) == EXIT_USAGE:
                raise SetupError(f"{p.notebook.stem}: {evalue} (executed notebook: {output})") from None
            print(f"FAILED  {p.notebook.stem}: cell {exc.exec_count}: {exc.ename}: {evalue}",
                  file=sys.stderr)
            print(f"        evidence: {output}", file=sys.stderr)
            status = EXIT_VIOLATED
            continue
        except Exception as exc:  # the kernel died, timed out or would not start: nothing was judged
            raise SetupError(f"{p.notebook.stem}: the notebook could not run: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
        print(f"passed  {p.notebook.stem} in {time.monotonic() - started:.1f} s  evidence: {output}")
    return status
