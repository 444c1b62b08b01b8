"""The ``harness`` command line: one subcommand per module of ``harness.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from harness import commands
from harness.errors import SetupError
from harness.logs import FieldsFormatter

#: Exit statuses shared by every subcommand.
EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_USAGE = 2


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="claimcheck: examine OAuth 2.0 authorization-code persistence on PostgreSQL.",
        epilog="Exit status: 0 nothing violated, 1 an invariant violated, 2 usage or setup error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the targets' warning events on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"harness.commands.{info.name}")
        module.register(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("harness")
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        status: int = args.handler(args)
    except SetupError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
