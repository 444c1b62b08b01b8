"""``harness notebook``: re-run a walkthrough with papermill against a target; keep the run as evidence."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import SetupError

#: The repository's notebooks/ and out/ (this file is harness/commands/notebook.py).
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "out" / "notebooks"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "notebook", help="re-run a notebook with papermill against a target, keep it as evidence",
        description="Execute notebooks/NAME.ipynb with papermill, with the given parameters, and "
                    "write the executed notebook to out/notebooks/. Exit status 1 when a cell's "
                    "assertion fails (a property the notebook shows does not hold on the target).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="notebook name or number prefix, e.g. 04 or 04_concurrent_claim "
                             "(default: every notebook)")
    parser.add_argument("--target", default=None,
                        help="the notebooks' target parameter (default HARNESS_TARGET or faithful)")
    parser.add_argument("--database-url", default=None,
                        help="the notebooks' database_url parameter (default: HARNESS_DATABASE_URL "
                             "or the embedded server)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="another parameter; VALUE is read as JSON when it parses (racers=16)")
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


def parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SetupError(f"--param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    if args.target is not None:
        params["target"] = args.target
    elif os.environ.get("HARNESS_TARGET"):
        params["target"] = os.environ["HARNESS_TARGET"]
    if args.database_url is not None:
        params["database_url"] = args.database_url
    return params


def evidence_path(out: Path, notebook: Path, params: dict[str, Any]) -> Path:
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(params.get("target", "default")))[:40]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return out / f"{notebook.stem}-{label}-{stamp}.ipynb"


def execute(notebook: Path, output: Path, params: dict[str, Any]) -> None:
    """Run ``notebook`` into ``output``; raises ``papermill.PapermillExecutionError`` on a failed cell."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=params,
                               kernel_name="python3", cwd=str(notebook.parent),
                               progress_bar=False)


def run(args: argparse.Namespace) -> int:
    if args.list:
        for path in notebooks():
            print(path.stem)
        return 0
    try:
        import papermill
    except ImportError as exc:
        raise SetupError("papermill is not installed: pip install 'claimcheck[notebooks]'") from exc
    params = parse_params(args)
    status = 0
    for notebook in resolve(args.names):
        output = evidence_path(args.out, notebook, params)
        started = time.monotonic()
        try:
            execute(notebook, output, params)
        except papermill.PapermillExecutionError as exc:
            print(f"FAILED  {notebook.stem}: cell {exc.exec_count}: {exc.ename}: "
                  f"{str(exc.evalue).splitlines()[0] if exc.evalue else ''}", file=sys.stderr)
            print(f"        evidence: {output}", file=sys.stderr)
            status = 1
            continue
        print(f"passed  {notebook.stem} in {time.monotonic() - started:.1f} s  evidence: {output}")
    return status
