"""``harness serve``: a test authorization server over a target, served by uvicorn.

``GET /authorize`` (RFC 6749 §4.1.1–§4.1.2.1, RFC 7636 §4.3), ``POST /token``
(§3.2, §4.1.3, §6), ``POST /introspect`` (RFC 7662) and ``GET /healthz``
(``harness.sut.token_server``). At startup it registers the test clients of
``examples/endpoints/harness-serve.toml`` and a test user in the target's
database, once, in this process (never in a uvicorn worker); at shutdown,
Ctrl-C and SIGTERM included, it deletes exactly the rows it created.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import math
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from harness.database import connect, describe_target
from harness.errors import SetupError
from harness.settings import Settings
from harness.targets import load_target

if TYPE_CHECKING:
    from harness.sut.token_server import Registration

APP_FACTORY = "harness.sut.token_server:create_app_from_env"
#: The default of ``--read-timeout`` (``harness.sut.token_server.DEFAULT_READ_TIMEOUT_S``, kept here
#: so that ``harness --help`` does not import the http extra).
DEFAULT_READ_TIMEOUT_S = 10.0
#: At shutdown, requests in flight get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN_S = 10


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a test authorization server (GET /authorize, POST /token, POST /introspect, "
        "GET /healthz) over a target",
        description="GET /authorize (RFC 6749 §4.1.1, auto-consent for a test user, PKCE passed to "
        "the target), POST /token (authorization_code, refresh_token; RFC 6749 §3.2, §4.1.3, §6), "
        "POST /introspect (RFC 7662) and GET /healthz over a target. The database is "
        "HARNESS_DATABASE_URL or the embedded server (started or reused); HARNESS_AT_REST_PEPPER must "
        "be set. The test clients of examples/endpoints/harness-serve.toml (claimcheck-a, "
        "claimcheck-b: secret from CLAIMCHECK_CLIENT_SECRET; claimcheck-public) and the user "
        "claimcheck-user are registered where absent and removed at shutdown.",
    )
    parser.add_argument("--target", default=None, help="target name (default HARNESS_TARGET or faithful)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default 8000; 0 picks a free one, shown in the start line)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S, metavar="SECONDS",
                        help="seconds a client has to send a request's head, and then its body; "
                        f"slower connections are closed (408) (default {DEFAULT_READ_TIMEOUT_S:g})")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request (client, method, path, status; never a body "
                        "or a query string)")
    parser.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn.

    A taken port or an address that cannot be bound is then one line and
    exit 2 (uvicorn would log it and exit 1, which means "violated" here),
    and no other process can take the port between a check and the bind.
    """
    try:
        host.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 arrive as lone surrogates
        raise SetupError("--host is not valid UTF-8") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:  # unknown name; a label IDNA cannot encode
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SetupError(f"cannot listen on {host}:{port}: --host does not resolve ({reason})") from None
    # IPv4 first, as uvicorn does for a name: "localhost" then means 127.0.0.1.
    family, _, proto, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        # As uvicorn: a restarted server need not wait for the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # the workers serve on this very socket
    return sock


def log_config(verbose: bool) -> dict[str, Any]:
    """uvicorn's logging plus the harness's, applied alike in the supervisor and in every worker.

    uvicorn runs this ``dictConfig`` in each process it starts. A spawned
    worker inherits nothing of the CLI's logging set-up, so without this its
    ``harness.*`` events would lose ``-v``, its formatter (secret fields
    fingerprinted, ``harness.logs.FieldsFormatter``) and its level. The
    access log goes through ``AccessLogFilter``: never a query string.
    """
    import uvicorn.config

    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["no_query"] = {"()": "harness.sut.token_server.AccessLogFilter"}
    config["handlers"]["access"]["filters"] = ["no_query"]
    config["formatters"]["harness"] = {"()": "harness.logs.FieldsFormatter",
                                       "fmt": "%(levelname)s %(name)s: %(message)s"}
    config["handlers"]["harness"] = {"class": "logging.StreamHandler", "formatter": "harness",
                                     "stream": "ext://sys.stderr"}
    config["loggers"]["harness"] = {"handlers": ["harness"], "level": "INFO" if verbose else "ERROR",
                                    "propagate": False}
    # The pool's reconnection attempts while the database is down: shown with -v.
    config["loggers"]["psycopg"] = {"handlers": ["harness"], "level": "WARNING" if verbose else "ERROR",
                                    "propagate": False}
    return config


def _announce(registration: Registration, secret_set: bool) -> None:
    """Say on stderr which test clients and user serve ``/authorize``: names only, never a secret."""
    from harness.sut.token_server import CLIENT_SECRET_ENV, SERVED_CLIENTS

    if not secret_set:
        confidential = ", ".join(c.client_id for c in SERVED_CLIENTS if c.confidential)
        print(f"harness serve: {CLIENT_SECRET_ENV} is not set: only the public test client is registered "
              f"({confidential} need that secret)", file=sys.stderr)
    found = [c for c in registration.clients if c not in registration.created_clients]
    if not registration.created_user:
        found.append(f"user {registration.user_id}")
    print(f"harness serve: test user {registration.user_id}, clients {', '.join(registration.clients)}"
          + (f" (already there, left as they are: {', '.join(found)})" if found else "")
          + "; the rows it creates are removed at shutdown", file=sys.stderr)


def _remove(registration: Registration) -> None:
    """Delete the rows this process registered (and what hangs off them): also after Ctrl-C or SIGTERM.

    Another Ctrl-C or SIGTERM meanwhile would leave rows behind, so both wait
    for the removal: it is a few bounded statements (connect and statement
    timeouts), and the process is on its way out anyway.
    """
    ignored: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            ignored[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        removed = registration.cleanup()
    except Exception as exc:  # the database may be gone: say what is left, never a traceback
        left = ", ".join([*registration.created_clients,
                          *([f"user {registration.user_id}"] if registration.created_user else [])])
        print(f"harness serve: warning: could not remove the rows it created ({left}, with their codes "
              f"and tokens): {type(exc).__name__}", file=sys.stderr)
    else:
        print(f"harness serve: removed the {removed.clients} client(s), {removed.users} user(s), "
              f"{removed.codes} code(s) and {removed.refresh_tokens} refresh token(s) it created",
              file=sys.stderr)
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)


def _serve(args: argparse.Namespace, spec: str, url: str, listener: socket.socket) -> None:
    """Run uvicorn (one process, or a supervisor and ``--workers`` workers) until it is stopped."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from harness.sut.token_server import READ_TIMEOUT_ENV, SUPERVISOR_ENV, DeadlineH11Protocol

    # uvicorn's workers build their own target from these (the app factory reads them).
    os.environ["HARNESS_DATABASE_URL"] = url
    os.environ["HARNESS_TARGET"] = spec
    os.environ[READ_TIMEOUT_ENV] = repr(args.read_timeout)
    if args.workers > 1:
        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the workers exit when this process dies
    else:
        os.environ.pop(SUPERVISOR_ENV, None)
    port = listener.getsockname()[1]
    shown_host = f"[{args.host}]" if ":" in args.host else args.host  # RFC 3986 §3.2.2
    if not _is_loopback(args.host):
        # /authorize has no login: reaching the port is enough to get codes for the test user.
        print(f"harness serve: warning: {args.host} is not a loopback address and there is no "
              "TLS; anyone who can reach it can obtain codes for the test user and redeem them",
              file=sys.stderr)
    print(f"harness serve: target {spec}, database {describe_target(url)}, "
          f"POST http://{shown_host}:{port}/token (also GET /authorize, POST /introspect), "
          f"{args.workers} worker(s), read timeout {args.read_timeout:g} s", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        APP_FACTORY, factory=True, host=args.host, port=port, workers=args.workers,
        http=DeadlineH11Protocol, access_log=args.access_log, log_level="info",
        log_config=log_config(args.verbose), timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # SIGINT and SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (one process) or
    # returns (the supervisor); the CLI turns a re-raised signal into KeyboardInterrupt. Either way
    # ``run`` then removes the registered rows and closes the database (and stops an embedded
    # server this command started).
    if args.workers > 1:
        supervisor = Multiprocess(config, sockets=[listener])
        supervisor.run()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            raise SetupError("a worker of the token endpoint failed to start (see the log above)")
    else:
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[listener])
        except SystemExit:  # uvicorn's exit on a failed application startup
            if server.started:
                raise
        if not server.started:
            raise SetupError("the token endpoint failed to start (see the log above)")


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401  (the app's framework, imported by the uvicorn workers)
        import uvicorn  # noqa: F401  (imported here so that a missing extra is one clear line)

        from harness.sut.token_server import CLIENT_SECRET_ENV, register_test_clients
    except ImportError as exc:
        raise SetupError(
            f"harness serve needs the http extra: pip install 'claimcheck[http]' ({exc})"
        ) from exc

    if args.workers < 1:
        raise SetupError("--workers must be at least 1")
    if not 0 <= args.port < 65536:
        raise SetupError("--port must be between 1 and 65535 (or 0 for any free port)")
    if not (math.isfinite(args.read_timeout) and args.read_timeout > 0):
        raise SetupError("--read-timeout must be a positive number of seconds")
    settings = Settings.from_env()
    if not settings.pepper:
        raise SetupError("HARNESS_AT_REST_PEPPER is not set: the endpoint cannot hash codes at rest")
    listener = bind_listener(args.host, args.port)
    try:
        spec = args.target or settings.target
        with connect(settings.database_url) as db:
            target = load_target(spec, db)  # fail now (exit 2) on an unknown target, not at the first request
            # Registered here, once: the workers only serve, and this process, which outlives them,
            # removes what it created. A conflicting row is exit 2 with nothing written.
            secret = os.environ.get(CLIENT_SECRET_ENV) or None
            registration = register_test_clients(db, target, secret)
            try:
                _announce(registration, secret is not None)
                _serve(args, spec, db.url, listener)
            finally:
                _remove(registration)
    finally:
        listener.close()
    return 0
