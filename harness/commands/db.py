"""``harness db start|stop|url|status|delete``: the embedded server, shared by kernels and Locust."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.database import connect
from harness.embedded import EmbeddedServer
from harness.settings import default_data_dir


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="start, stop or show the embedded PostgreSQL")
    parser.add_argument("action", choices=["start", "stop", "url", "status", "delete"])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: HARNESS_DATA_DIR or ~/.claimcheck/pgdata)")
    parser.add_argument("--json", action="store_true", help="print status as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    server = EmbeddedServer(args.data_dir or default_data_dir())
    if args.action == "start":
        db = connect(data_dir=server.data_dir)
        # Leave it running for other processes: this command's job is to start it.
        db.owns_server = False
        db.close()
        print(db.url)
        return 0
    if args.action == "stop":
        print("stopped" if server.stop() else "not running")
        return 0
    if args.action == "delete":
        server.delete()
        print(f"deleted {server.data_dir}")
        return 0
    status = server.status()
    if args.action == "url":
        if status.url is None:
            print(f"not running (data dir {status.data_dir}); start it with: harness db start")
            return 1
        print(status.url)
        return 0
    info = {"data_dir": str(status.data_dir), "initialised": status.initialised,
            "running": status.running, "pid": status.pid, "url": status.url}
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:12} {value}")
    return 0
