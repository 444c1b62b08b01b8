"""The ``harness`` command line: one subcommand per module of ``harness.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from types import FrameType

from harness import commands
from harness.errors import SetupError
from harness.logs import FieldsFormatter

#: Exit statuses shared by every subcommand.
EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_USAGE = 2
#: Ctrl-C or SIGTERM: stopped with a partial report (128 + SIGINT).
EXIT_INTERRUPTED = 130


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _named_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if there is one."""
    names = {info.name for info in pkgutil.iter_modules(commands.__path__)}
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in names else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` naming a subcommand, only that subcommand's module is imported.

    A race of 64 racers × 10,000 codes keeps its whole history in the parent: the other
    commands' imports (pandas and the rest, ~45 MB) have no business in that process.
    """
    parser = argparse.ArgumentParser(
        prog="harness",
        description="claimcheck: examine OAuth 2.0 authorization-code persistence on PostgreSQL.",
        epilog="Exit status: 0 nothing violated, 1 an invariant violated, 2 usage or setup error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the targets' warning events on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    only = _named_command(argv) if argv is not None else None
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if only is None or info.name == only:
            module = importlib.import_module(f"harness.commands.{info.name}")
            module.register(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("harness")
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.ERROR)


def _check_text(argv: Sequence[str]) -> None:
    """Arguments and settings must be text: bytes that are not UTF-8 arrive as lone surrogates."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise SetupError(f"argument {shown!r} is not valid UTF-8") from None
    for name in ("HARNESS_DATABASE_URL", "HARNESS_AT_REST_PEPPER", "HARNESS_TARGET", "HARNESS_DATA_DIR"):
        value = os.environ.get(name)
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise SetupError(f"{name} is not valid UTF-8") from None


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the Ctrl-C path: racers stopped, rows removed, servers released, a report.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        _check_text(argv)
    except SetupError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        status: int = args.handler(args)
    except SetupError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unforeseen fault: one line, never exit 1 ("violated")
        if args.verbose:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"harness: error: {type(exc).__name__}: {first} (run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_USAGE
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
