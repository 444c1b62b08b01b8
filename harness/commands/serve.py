"""``harness serve``: the RFC 6749 token endpoint over a target, served by uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from typing import Any

from harness.database import connect, describe_target
from harness.errors import SetupError
from harness.settings import Settings
from harness.targets import load_target

APP_FACTORY = "harness.rfc6749_endpoint:create_app_from_env"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve the RFC 6749 token endpoint (POST /token, GET /healthz) over a target",
        description="POST /token (authorization_code, refresh_token; RFC 6749 §3.2, §4.1.3, §6) "
        "and GET /healthz over a target. The database is HARNESS_DATABASE_URL or the embedded "
        "server (started or reused); HARNESS_AT_REST_PEPPER must be set.",
    )
    parser.add_argument("--target", default=None, help="target name (default HARNESS_TARGET or faithful)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request (method, path, status; never bodies)")
    parser.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_can_listen(host: str, port: int) -> None:
    """Fail with exit 2 (not uvicorn's exit 1, which means "violated" here) on a taken port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        raise SetupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401  (the app's framework, imported by the uvicorn workers)
        import uvicorn
    except ImportError as exc:
        raise SetupError(
            f"harness serve needs the http extra: pip install 'claimcheck[http]' ({exc})"
        ) from exc

    if args.workers < 1:
        raise SetupError("--workers must be at least 1")
    if not 0 < args.port < 65536:
        raise SetupError("--port must be between 1 and 65535")
    _check_can_listen(args.host, args.port)
    settings = Settings.from_env()
    if not settings.pepper:
        raise SetupError("HARNESS_AT_REST_PEPPER is not set: the endpoint cannot hash codes at rest")
    spec = args.target or settings.target
    with connect(settings.database_url) as db:
        load_target(spec, db)  # fail now (exit 2) on an unknown target, not at the first request
        # uvicorn's workers build their own target from these (the app factory reads them).
        os.environ["HARNESS_DATABASE_URL"] = db.url
        os.environ["HARNESS_TARGET"] = spec
        if not _is_loopback(args.host):
            print(f"harness serve: warning: {args.host} is not a loopback address and there is no "
                  "TLS; anyone who can reach it can redeem codes", file=sys.stderr)
        print(f"harness serve: target {spec}, database {describe_target(db.url)}, "
              f"POST http://{args.host}:{args.port}/token, {args.workers} worker(s)",
              file=sys.stderr, flush=True)
        # uvicorn re-raises SIGTERM once it has shut down; as an exception it lets this block
        # close the database (and stop an embedded server this command started).
        signal.signal(signal.SIGTERM, _terminate)
        uvicorn.run(APP_FACTORY, factory=True, host=args.host, port=args.port,
                    workers=args.workers, access_log=args.access_log, log_level="info")
    return 0
