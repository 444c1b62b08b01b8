"""``harness db start|stop|url|status|delete|migrate``: the embedded cluster, and the schema on any database.

``start``, ``stop``, ``url``, ``status`` and ``delete`` act only on the embedded cluster
(``--data-dir``, ``HARNESS_DATA_DIR`` or the default) and only if it is a harness cluster
(its marker file); ``HARNESS_DATABASE_URL`` is ignored by them. ``migrate`` creates the schema
in ``HARNESS_DATABASE_URL`` (or ``--url``): the one explicit step that writes DDL into a
database the harness did not create.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.database import Database, check_reachable, describe_target
from harness.embedded import EmbeddedServer
from harness.errors import SetupError
from harness.settings import Settings, default_data_dir


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "db", help="start, stop, show or delete the embedded PostgreSQL; migrate a database",
        description="start: start the embedded cluster and leave it running (pinned) for other "
        "processes; stop: stop it (refused while a run uses it, unless --force); url / status: "
        "show it; delete: stop it and remove its data directory (asks first; --yes to skip); "
        "migrate: create the claimcheck schema (online: CREATE INDEX CONCURRENTLY) in "
        "HARNESS_DATABASE_URL or --url. Only migrate looks at HARNESS_DATABASE_URL.")
    parser.add_argument("action", choices=["start", "stop", "url", "status", "delete", "migrate"])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the embedded cluster's data directory (default: HARNESS_DATA_DIR or "
                             "~/.claimcheck/pgdata)")
    parser.add_argument("--url", default=None, help="migrate: the database (default HARNESS_DATABASE_URL)")
    parser.add_argument("--yes", action="store_true", help="delete: do not ask")
    parser.add_argument("--force", action="store_true", help="stop: even while runs use the server")
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    parser.set_defaults(handler=run)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _migrate(args: argparse.Namespace) -> int:
    url = args.url or Settings.from_env().database_url
    if url:
        check_reachable(url)
        db = Database(url)
        statements = db.migrate()
        db.verify(ledger=True)
        print(f"schema ready in {describe_target(url)} ({len(statements)} statements, "
              "existing tables left as they were)")
        return 0
    server = EmbeddedServer(args.data_dir or default_data_dir())
    url, _, lease = server.acquire()
    try:
        Database(url, embedded=server).migrate()
    finally:
        server.release(lease)
    print(f"schema ready in the embedded cluster {server.data_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _migrate(args)
    data_dir = args.data_dir or default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise SetupError(f"{data_dir} is not a directory")
    server = EmbeddedServer(data_dir)
    if Settings.from_env().database_url and args.action in ("start", "delete"):
        print("note: HARNESS_DATABASE_URL is set; `harness db` manages only the embedded cluster in "
              f"{server.data_dir}", file=sys.stderr)
    if args.action == "start":
        url, started = server.start()
        Database(url, embedded=server).migrate()  # ready for kernels and Locust workers
        print(url)
        print(("started" if started else "already running") + f"; it stays up until `harness db stop` "
              f"(data: {server.data_dir})", file=sys.stderr)
        return 0
    if args.action == "stop":
        print("stopped" if server.stop(force=args.force) else "not running")
        return 0
    if args.action == "delete":
        server.require_cluster("delete")
        if not args.yes and not _confirm(f"delete the embedded cluster {server.data_dir} and all its data?"):
            raise SetupError(f"not deleted: confirm with --yes to delete {server.data_dir}")
        server.delete()
        print(f"deleted {server.data_dir}")
        return 0
    status = server.status()
    if args.action == "url":
        if status.url is None:
            print(f"not running (data dir {status.data_dir}); start it with: harness db start",
                  file=sys.stderr)
            return 2
        print(status.url)
        return 0
    info = {"data_dir": str(status.data_dir), "harness_cluster": status.harness_cluster,
            "initialised": status.initialised, "running": status.running, "pid": status.pid,
            "url": status.url, "pinned": status.pinned, "users": status.leases}
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:16} {value}")
    return 0
