"""A test authorization server over any target, as a Starlette ASGI app (``harness serve``).

* ``POST /token``: the RFC 6749 token endpoint (§3.2, §4.1.3, §6; errors §5.2).
* ``GET /authorize``: the authorization endpoint (RFC 6749 §4.1.1–§4.1.2.1, with
  PKCE parameters passed through per RFC 7636 §4.3), auto-consenting for one
  configured test user, so that a target can be attacked black-box.
* ``POST /introspect``: RFC 7662 token introspection, client-authenticated.
* ``GET /healthz``: whether the database answers.

The test clients and user that ``/authorize`` serves are registered in the
target's database by ``harness serve`` (:func:`register_test_clients`), under
the harness's safety contract (``harness.scope``): a row is inserted only if
absent, and only the rows this process inserted are removed at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import html
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote_plus, urlencode

import anyio
import anyio.to_thread
import h11
import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from harness.at_rest import hash_at_rest
from harness.database import Database, connect
from harness.errors import InternalError, OAuthError, SetupError
from harness.repository import MAX_INPUT_CHARS, AuthCodeParams
from harness.scope import Removed
from harness.settings import Settings
from harness.targets import Target, load_target

log = logging.getLogger("harness.http")
T = TypeVar("T")

#: Bodies above this are refused before they are read in full: a token request is a few hundred bytes.
MAX_BODY_BYTES = 16 * 1024
#: More fields than any grant needs is an attack on the parser, not a request.
MAX_FIELDS = 32
FORM_TYPE = "application/x-www-form-urlencoded"
#: RFC 6749 §5.1 / §5.2: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Seconds a client has to send a request head, and then its body (Slowloris): ``harness serve
#: --read-timeout``, passed to the workers in this variable.
READ_TIMEOUT_ENV = "HARNESS_SERVE_READ_TIMEOUT_S"
DEFAULT_READ_TIMEOUT_S = 10.0
#: A request that has not been answered after this long gets a 503, whatever holds it (a database
#: that accepts connections but never answers, e.g. a paused server): a hang guard, far above the
#: pool's own timeout (``POOL_TIMEOUT_S``), which answers a stopped database within 2 s.
GRANT_DEADLINE_S = 15.0
#: /healthz must answer quickly even when the database does not (a load balancer's probe).
HEALTH_TIMEOUT_S = 2.0
#: RFC 9110 §10.2.3: how long a client should wait before retrying a 503.
RETRY_AFTER_S = 2
#: Set by ``harness serve --workers N`` (N > 1): the pid of the uvicorn supervisor its workers must
#: not outlive.
SUPERVISOR_ENV = "HARNESS_SERVE_SUPERVISOR_PID"
#: Seconds a worker whose supervisor died waits for its graceful shutdown before it exits anyway.
ORPHAN_GRACE_S = 5.0
_WWW_BASIC = {"WWW-Authenticate": 'Basic realm="token"'}
#: What a client without a secret (or an unknown client) is hashed and compared against, so that
#: every path costs one HMAC and one comparison (see ``authenticate_client``). Not a hex digest:
#: no stored ``client_secret_hash`` can ever equal it.
_DUMMY_SECRET = "claimcheck: no client secret presented"
_DUMMY_DIGEST = "-" * 64


class TokenError(Exception):
    """An RFC 6749 §5.2 error response: ``error`` code, HTTP status, public description."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


def error_response(error: str, description: str, status: int = 400,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The RFC 6749 §5.2 JSON body with ``no-store`` headers."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={**NO_STORE, **(headers or {})})


def _invalid_request(description: str) -> TokenError:
    return TokenError("invalid_request", description)


def _unavailable() -> TokenError:
    """503 ``temporarily_unavailable`` (RFC 6749 §4.1.2.1's code; §5.2 has none for an outage).

    ``Retry-After`` tells a client when to try again (RFC 9110 §10.2.3). A
    request that got this may or may not have been carried out (a claim can
    commit as the connection drops): like Jepsen's ``info``, its outcome is unknown.
    """
    return TokenError("temporarily_unavailable", "the token endpoint's database is unavailable; "
                      "retry later", 503, {"Retry-After": str(RETRY_AFTER_S)})


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or unreachable database, not a bug.

    ``psycopg.OperationalError`` covers a refused or dropped connection, a
    server shutting down, and the pool's ``PoolTimeout`` (no connection within
    ``POOL_TIMEOUT_S``). The targets wrap driver errors in ``InternalError``
    (``raise … from exc``), so the chain of causes is walked.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, psycopg.OperationalError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def read_timeout_s() -> float:
    """The ``--read-timeout`` of this server (``HARNESS_SERVE_READ_TIMEOUT_S``), else the default."""
    try:
        value = float(os.environ.get(READ_TIMEOUT_ENV, ""))
    except ValueError:
        return DEFAULT_READ_TIMEOUT_S
    return value if value > 0 else DEFAULT_READ_TIMEOUT_S


def _check_content_type(value: str | None) -> None:
    """RFC 6749 §3.2: ``application/x-www-form-urlencoded``, UTF-8 (Appendix B) if a charset is named."""
    if value is None:
        raise _invalid_request(f"Content-Type must be {FORM_TYPE}")
    media_type, *params = (part.strip() for part in value.split(";"))
    if media_type.lower() != FORM_TYPE:
        raise _invalid_request(f"Content-Type must be {FORM_TYPE}")
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in (
            "utf-8", "utf8"
        ):
            raise _invalid_request("the form body must be UTF-8 (RFC 6749 Appendix B)")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit``: never read unbounded."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _invalid_request("malformed Content-Length")
        if int(declared) > limit:
            raise _invalid_request(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _invalid_request(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body_within(request: Request, timeout_s: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """``read_body``, cut after ``timeout_s`` seconds: a body that trickles in is a Slowloris.

    408 (RFC 9110 §15.5.9) with ``Connection: close``: the rest of the body
    may still be on its way, so the connection cannot carry another request.
    """
    with anyio.move_on_after(timeout_s):
        return await read_body(request, limit)
    raise TokenError("invalid_request", f"the request body did not arrive within {timeout_s:g} s",
                     408, {"Connection": "close"})


def _parse_pairs(raw: bytes, what: str = "form body", item: str = "form") -> list[tuple[str, str]]:
    """The name-value pairs of a form body or query string, parsed strictly (RFC 6749 Appendix B).

    Refused (``invalid_request``): non-ASCII bytes (form encoding is ASCII on
    the wire), invalid percent escapes, escapes that do not decode to UTF-8,
    fields without ``=``, more than ``MAX_FIELDS`` fields, NUL characters.
    ``what`` and ``item`` name the part in the public description ("form body"
    and "form", or "query" twice).
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _invalid_request(f"the {what} contains bytes that are not form-urlencoded") from None
    if _BAD_PERCENT.search(text):
        raise _invalid_request(f"the {what} contains an invalid percent escape")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8",
                          errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise _invalid_request(f"a {item} value is not valid UTF-8") from None
    except ValueError:
        raise _invalid_request(f"malformed {what}") from None
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise _invalid_request(f"a {item} parameter contains a NUL character")
    return pairs


def parse_form(body: bytes) -> dict[str, str]:
    """Parse a form body strictly (RFC 6749 §3.2, Appendix B); blank values count as omitted.

    Refused: whatever ``_parse_pairs`` refuses, values longer than the
    repository accepts, and any parameter sent more than once (§3.2: "MUST
    NOT be included more than once").
    """
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in _parse_pairs(body):
        if name in seen:
            raise _invalid_request(f"parameter {name!r} included more than once"[:200])
        seen.add(name)
        if len(value) > MAX_INPUT_CHARS:
            raise _invalid_request(f"parameter {name!r} is longer than {MAX_INPUT_CHARS} characters"[:200])
        if value:
            form[name] = value
    return form


@dataclass(frozen=True)
class ClientCredentials:
    """Who the request says it is (RFC 6749 §2.3.1), and whether it used HTTP Basic."""

    client_id: str
    secret: str | None
    basic: bool


def _has_control(text: str) -> bool:
    """Control characters (C0, DEL, C1: Unicode category Cc) have no place in a client id or secret."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _basic_credentials(encoded: str) -> tuple[str, str]:
    """(client id, secret) of an HTTP Basic value (RFC 6749 §2.3.1: each form-urlencoded, then base64).

    Anything malformed is ``invalid_client`` (401), never a 500: base64 that
    is not, bytes or percent escapes that are not UTF-8, control characters
    (a NUL would reach the database driver), values over the repository's limit.
    """
    def refuse() -> TokenError:
        return TokenError("invalid_client", "malformed Basic credentials", 401, _WWW_BASIC)

    try:
        # A header value with non-ASCII bytes makes b64decode raise ValueError (binascii.Error
        # is its subclass): both are the client's mistake.
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        raw_id, sep, raw_secret = decoded.partition(":")
        client_id = unquote_plus(raw_id, errors="strict")
        secret = unquote_plus(raw_secret, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise refuse() from None
    if not sep or not client_id or _has_control(decoded) or _has_control(client_id + secret):
        raise refuse()
    if len(client_id) > MAX_INPUT_CHARS or len(secret) > MAX_INPUT_CHARS:
        raise refuse()
    return client_id, secret


def client_credentials(authorization: str | None, form: dict[str, str]) -> ClientCredentials:
    """Client id and secret from HTTP Basic or the body, never both (RFC 6749 §2.3)."""
    if authorization is not None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise TokenError("invalid_client", "unsupported client authentication scheme", 401,
                             _WWW_BASIC)
        client_id, secret = _basic_credentials(encoded)
        if "client_secret" in form:
            raise _invalid_request("more than one client authentication method (RFC 6749 §2.3)")
        if "client_id" in form and form["client_id"] != client_id:
            raise _invalid_request("client_id in the body differs from the authenticated client")
        return ClientCredentials(client_id, secret, basic=True)
    if "client_id" not in form:
        raise _invalid_request("missing client_id")
    return ClientCredentials(form["client_id"], form.get("client_secret"), basic=False)


def client_secret_digest(target: Target, secret: str) -> str:
    """What ``oauth_clients.client_secret_hash`` holds for ``secret``: its ``hash_at_rest``, target's pepper.

    One function for both sides (``authenticate_client`` and
    ``register_test_clients``), so the registered digest and the compared
    one can never differ.
    """
    return hash_at_rest(secret, getattr(target, "pepper", None))


def authenticate_client(target: Target, creds: ClientCredentials, *, confidential_only: bool = False) -> None:
    """The client must exist in ``oauth_clients``; a client with a ``client_secret_hash`` must prove it.

    ``client_secret_hash`` holds ``hash_at_rest(secret)`` (the deployment
    pepper's HMAC); a client without one is public (RFC 6749 §2.1) and a
    secret it sends is ignored. A target without a ``db`` is not checked.
    With ``confidential_only`` a public client is refused too: it cannot
    authenticate, and RFC 7662 §2.1 wants the caller of introspection
    authenticated (a public client id is no credential, §4: token scanning).

    Every path does the same work: one ``hash_at_rest`` (of the presented
    secret, or of a fixed dummy when none was sent) and one
    ``compare_digest`` (against the stored digest, or a fixed dummy when the
    client is unknown or public). An unknown client, a public one and a wrong
    secret then take as long as a right one, so response times do not tell
    which client ids exist or which are confidential (a timing side channel).
    The database lookup of the id is the same statement for every id.
    """
    db: Database | None = getattr(target, "db", None)
    if db is None:
        return
    with db.read_pool.connection() as conn:
        row = conn.execute(
            "SELECT client_secret_hash FROM oauth_clients WHERE client_id = %s", (creds.client_id,)
        ).fetchone()
    known = row is not None
    stored: str | None = row[0] if row is not None else None
    presented = client_secret_digest(target, creds.secret if creds.secret is not None else _DUMMY_SECRET)
    matches = compare_digest(presented.encode(), (stored if stored is not None else _DUMMY_DIGEST).encode())
    if known and ((stored is None and not confidential_only) or (creds.secret is not None and matches)):
        return
    raise TokenError("invalid_client", "client authentication failed", 401,
                     _WWW_BASIC if creds.basic else None)


def server_fault(exc: InternalError, what: str) -> TokenError:
    """The answer to a target's internal error: 503 while the database is unavailable, else 500.

    Never a stack trace; the log line names the internal reason only (never a secret).
    """
    if database_unavailable(exc):
        log.warning("%s refused, database unavailable: %s", what, exc.detail)
        return _unavailable()
    log.error("%s failed: %s", what, exc.detail)
    return TokenError(exc.error, "Internal server error", exc.status)


def grant(target: Target, form: dict[str, str], creds: ClientCredentials) -> dict[str, Any]:
    """Run the grant named by ``grant_type`` (synchronous: called in the threadpool)."""
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise _invalid_request("missing grant_type")
    if grant_type not in ("authorization_code", "refresh_token"):
        raise TokenError("unsupported_grant_type", "grant_type not supported by this endpoint")
    required = "code" if grant_type == "authorization_code" else "refresh_token"
    if required not in form:
        raise _invalid_request(f"missing {required}")
    authenticate_client(target, creds)
    try:
        if grant_type == "authorization_code":
            tokens = target.exchange_code(form["code"], creds.client_id, form.get("redirect_uri"),
                                          form.get("code_verifier"))
        else:
            # RFC 6749 §6 lets a client narrow ``scope``; the targets always reissue the
            # original scope, which the response states.
            tokens = target.refresh(form["refresh_token"], creds.client_id)
    except InternalError as exc:
        raise server_fault(exc, "token request") from None
    except OAuthError as exc:
        # The one wire mapping (harness.errors): each kind carries its RFC 6749 §5.2 code.
        raise TokenError(exc.error, str(exc), exc.status) from None
    return tokens.response()


async def run_with_deadline(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; a 503 ``temporarily_unavailable`` if it outlives the deadline.

    A request still running at ``GRANT_DEADLINE_S`` (a database that accepts
    but never answers) gets its 503 and the thread is left to finish on its
    own: a thread blocked in a socket read cannot be interrupted. ``what``
    names the request in the log.
    """
    finished = False
    result: Any = None
    with anyio.move_on_after(GRANT_DEADLINE_S) as deadline:
        result = await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        finished = True
    if deadline.cancelled_caught or not finished:
        log.error("%s abandoned after %g s", what, GRANT_DEADLINE_S)
        raise _unavailable()
    return cast(T, result)


def _failure(exc: Exception, what: str) -> TokenError:
    """The §5.2 answer to an unexpected exception: 503 for a lost database, else 500; never a traceback."""
    if database_unavailable(exc):
        log.warning("%s refused, database unavailable: %s", what, type(exc).__name__)
        return _unavailable()
    log.error("%s failed: %s", what, type(exc).__name__)
    return TokenError("server_error", "Internal server error", 500)


# -- the test clients and user of ``harness serve`` ------------------------------------------------

#: The resource owner ``/authorize`` consents for at once: there is no login step.
TEST_USER = "claimcheck-user"
#: The redirect URI of every test client.
TEST_REDIRECT_URI = "https://client.example/cb"
#: The confidential test clients' secret: read from the environment only, never printed.
CLIENT_SECRET_ENV = "CLAIMCHECK_CLIENT_SECRET"


@dataclass(frozen=True)
class ServedClient:
    """A test client of ``harness serve`` (RFC 6749 §2); the confidential ones share one secret."""

    client_id: str
    confidential: bool
    redirect_uris: tuple[str, ...] = (TEST_REDIRECT_URI,)


#: The ``[[clients]]`` of ``examples/endpoints/harness-serve.toml``: what a reviewer's tool uses.
SERVED_CLIENTS: tuple[ServedClient, ...] = (
    ServedClient("claimcheck-a", confidential=True),
    ServedClient("claimcheck-b", confidential=True),
    ServedClient("claimcheck-public", confidential=False),
)
SERVED_CLIENT_IDS: frozenset[str] = frozenset(c.client_id for c in SERVED_CLIENTS)
#: Statements of the shutdown cleanup may take this long (ms): a shutdown must not hang on a
#: database that stopped answering.
CLEANUP_STATEMENT_TIMEOUT_MS = 10_000


@dataclass
class Registration:
    """The test clients and user in the target's database, and which of those rows this process created.

    :meth:`cleanup` removes only ``created_clients`` and, if ``created_user``,
    the user, with the codes and refresh tokens that hang off them. A row that
    was there before (someone else's, or one a SIGKILLed server left behind)
    is used but never deleted.
    """

    db: Database
    #: Every test client that ``/authorize`` can serve: created here, or found as registered.
    clients: tuple[str, ...]
    created_clients: tuple[str, ...]
    created_user: bool
    user_id: str = TEST_USER
    removed: Removed | None = field(default=None, init=False)

    def cleanup(self) -> Removed:
        """Delete exactly the rows this process created, children first; never TRUNCATE or CASCADE.

        Idempotent. On a fresh connection of its own (the pools may be gone at shutdown).
        """
        if self.removed is not None:
            return self.removed
        removed = Removed()
        clients = list(self.created_clients)
        # ``user_id = NULL`` matches no row: a user that was there before keeps every row.
        user = self.user_id if self.created_user else None
        if clients or user is not None:
            with self.db.connect() as conn, conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {CLEANUP_STATEMENT_TIMEOUT_MS:d}".encode())
                # Codes before refresh tokens: a code links its token, and ON DELETE SET NULL would
                # write to the code rows on the way. The rows of a user this process created go too
                # (whatever their client): they can only have been issued after it was created, and
                # leaving them would let the foreign keys' ON DELETE CASCADE delete them unseen.
                removed.codes = conn.execute(
                    "DELETE FROM oauth_auth_codes WHERE client_id = ANY(%s) OR user_id = %s",
                    (clients, user)).rowcount
                removed.refresh_tokens = conn.execute(
                    "DELETE FROM oauth_refresh_tokens WHERE client_id = ANY(%s) OR user_id = %s",
                    (clients, user)).rowcount
                removed.clients = conn.execute(
                    "DELETE FROM oauth_clients WHERE client_id = ANY(%s)", (clients,)).rowcount
                if user is not None:
                    removed.users = conn.execute("DELETE FROM users WHERE id = %s", (user,)).rowcount
        self.removed = removed
        log.info("harness serve: removed %d rows it created", removed.total)
        return removed


def _registration_conflict(client: ServedClient, expected: str | None,
                           existing: tuple[Any, ...] | None) -> str | None:
    """Why an existing ``oauth_clients`` row cannot serve as ``client`` (never showing a secret or digest)."""
    if existing is None:  # deleted between our INSERT and this SELECT
        return f"the oauth_clients row {client.client_id!r} changed while harness serve registered it"
    stored, uris = existing
    same_secret = (stored is None and expected is None) or (
        stored is not None and expected is not None
        and compare_digest(str(stored).encode(), expected.encode()))
    if not same_secret:
        how = ("as a public client" if expected is None else
               f"with the digest of {CLIENT_SECRET_ENV}")
        return (f"oauth_clients already has a client {client.client_id!r} with another client_secret_hash: "
                f"harness serve registers it {how} and will not overwrite a row it did not create "
                "(remove that row, or serve another database)")
    missing = [uri for uri in client.redirect_uris if uri not in (uris or [])]
    if missing:
        return (f"oauth_clients already has a client {client.client_id!r} whose redirect_uris lack "
                f"{', '.join(missing)}: harness serve will not overwrite a row it did not create "
                "(remove that row, or serve another database)")
    return None


def register_test_clients(db: Database, target: Target, secret: str | None, *,
                          clients: Sequence[ServedClient] = SERVED_CLIENTS,
                          user_id: str = TEST_USER) -> Registration:
    """Insert the test clients and user where absent; remember which rows were inserted here.

    The confidential clients get ``client_secret_digest(target, secret)``;
    without ``secret`` only the public ones are registered. A client row that
    exists already is used if it matches (the same ``client_secret_hash``,
    ``redirect_uris`` that include ours); otherwise ``SetupError`` and nothing
    is written (one transaction): someone's row is never overwritten. Safe
    against another process registering at the same time (``ON CONFLICT DO
    NOTHING``: the row then counts as existing).
    """
    if secret is not None and (not secret or len(secret) > MAX_INPUT_CHARS or _has_control(secret)):
        raise SetupError(f"{CLIENT_SECRET_ENV} must be 1 to {MAX_INPUT_CHARS} characters without control "
                         "characters (HTTP Basic cannot carry others)")
    try:
        digest = client_secret_digest(target, secret) if secret else None
    except InternalError as exc:
        raise SetupError(f"cannot hash {CLIENT_SECRET_ENV}: {exc.detail}") from None
    wanted = [c for c in clients if not c.confidential or digest is not None]
    created: list[str] = []
    try:
        with db.connect() as conn, conn.transaction():
            created_user = conn.execute(
                "INSERT INTO users (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (user_id, "claimcheck test user (harness serve)")).fetchone() is not None
            for client in wanted:
                expected = digest if client.confidential else None
                row = conn.execute(
                    "INSERT INTO oauth_clients (client_id, client_secret_hash, client_name, redirect_uris) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (client_id) DO NOTHING RETURNING client_id",
                    (client.client_id, expected, "claimcheck test client (harness serve)",
                     list(client.redirect_uris))).fetchone()
                if row is not None:
                    created.append(client.client_id)
                    continue
                existing = conn.execute(
                    "SELECT client_secret_hash, redirect_uris FROM oauth_clients WHERE client_id = %s",
                    (client.client_id,)).fetchone()
                conflict = _registration_conflict(client, expected, existing)
                if conflict is not None:
                    raise SetupError(conflict)  # leaves the transaction: nothing stays written
    except psycopg.Error as exc:
        raise SetupError(f"cannot register the test clients: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return Registration(db, clients=tuple(c.client_id for c in wanted), created_clients=tuple(created),
                        created_user=created_user, user_id=user_id)


# -- the authorization endpoint (RFC 6749 §4.1.1–§4.1.2.1) -----------------------------------------

#: The parameters ``/authorize`` reads; any other is ignored (RFC 6749 §3.1).
AUTHORIZE_PARAMS = frozenset({"response_type", "client_id", "redirect_uri", "scope", "state",
                              "code_challenge", "code_challenge_method"})
#: RFC 6749 §3.3: ``scope = scope-token *( SP scope-token )``, ``scope-token = 1*NQCHAR``.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")


def _query_params(raw: bytes) -> dict[str, list[str]]:
    """The recognised parameters of an authorization request, each with every value it was sent."""
    params: dict[str, list[str]] = {}
    for name, value in _parse_pairs(raw, "query", "query"):
        if name in AUTHORIZE_PARAMS:
            if len(value) > MAX_INPUT_CHARS:
                raise _invalid_request(f"parameter {name!r} is longer than {MAX_INPUT_CHARS} characters")
            params.setdefault(name, []).append(value)
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    """A parameter sent at most once (RFC 6749 §3.1); blank counts as omitted."""
    values = params.get(name, [])
    if len(values) > 1:
        raise _invalid_request(f"parameter {name!r} included more than once")
    return values[0] if values and values[0] else None


def client_redirect_uris(target: Target, client_id: str) -> tuple[str, ...] | None:
    """The registered ``redirect_uris`` of ``client_id``, or ``None`` if no such client (synchronous)."""
    db: Database | None = getattr(target, "db", None)
    if db is None:  # nothing to verify a redirect URI against: no redirect at all
        return None
    with db.read_pool.connection() as conn:
        row = conn.execute("SELECT redirect_uris FROM oauth_clients WHERE client_id = %s",
                           (client_id,)).fetchone()
    return None if row is None else tuple(row[0] or ())


def authorization_code_params(params: dict[str, list[str]], client_id: str, redirect_uri: str,
                              user_id: str) -> AuthCodeParams:
    """What to store for a verified client's request, with a fresh code; ``TokenError`` if it is refused.

    The errors are RFC 6749 §4.1.2.1's (sent to the redirect URI). PKCE
    parameters pass through as they came (RFC 7636 §4.3): whether ``plain``
    or a missing method is acceptable is the target's to decide when it
    stores the code, so that verdicts over HTTP equal those in process.
    """
    for name in AUTHORIZE_PARAMS:
        _single(params, name)
    response_type = _single(params, "response_type")
    if response_type is None:
        raise _invalid_request("missing response_type")
    if response_type != "code":
        raise TokenError("unsupported_response_type", "only response_type=code is supported")
    scope = _single(params, "scope")
    # §3.3: without a scope the server must use a default or fail; this one has no default.
    if scope is None or not _SCOPE.fullmatch(scope):
        raise TokenError("invalid_scope", "scope is missing or malformed (RFC 6749 §3.3)")
    return AuthCodeParams(
        # 256 bits from the CSPRNG (RFC 6749 §10.10), like the refresh tokens.
        code=secrets.token_urlsafe(32), client_id=client_id, user_id=user_id, redirect_uri=redirect_uri,
        scope=scope, code_challenge=_single(params, "code_challenge"),
        code_challenge_method=_single(params, "code_challenge_method"))


def store_code(target: Target, params: AuthCodeParams) -> None:
    """The target stores the code (synchronous); its refusal is ``invalid_request`` (RFC 6749 §4.1.2.1)."""
    try:
        target.store_authorization_code(params)
    except InternalError as exc:
        raise server_fault(exc, "authorization request") from None
    except OAuthError as exc:
        # ``detail`` names the reason (e.g. "code_challenge_method must be S256"), never a value.
        log.info("the target refused to store an authorization code for %s: %s", params.client_id,
                 exc.detail)
        raise _invalid_request("the authorization request was refused") from None


def authorization_redirect(redirect_uri: str, params: dict[str, str], state: str | None) -> Response:
    """302 to a verified redirect URI, ``params`` and ``state`` added to its query (RFC 6749 §4.1.2).

    An existing query is kept (§3.1.2: "MUST retain"); the URI is extended as
    text, never re-serialised, so the client finds it exactly as registered.
    Not cached, and no ``Referer`` carries the code onwards.
    """
    if state is not None:
        params = {**params, "state": state}
    separator = "" if redirect_uri.endswith(("?", "&")) else "&" if "?" in redirect_uri else "?"
    return Response(status_code=302, headers={"Location": f"{redirect_uri}{separator}{urlencode(params)}",
                                              **NO_STORE, "Referrer-Policy": "no-referrer"})


def authorization_error_page(request: Request, exc: TokenError) -> Response:
    """An error shown to the user, never redirected (RFC 6749 §4.1.2.1): HTML for a browser, else JSON.

    The text is the server's own; nothing of the request is echoed.
    """
    if "text/html" in request.headers.get("accept", "").lower():
        page = (f"<!doctype html><meta charset=utf-8><title>Authorization error</title>"
                f"<h1>{html.escape(exc.error)}</h1><p>{html.escape(exc.description)}</p>")
        return HTMLResponse(page, status_code=exc.status, headers={**NO_STORE, **exc.headers})
    return error_response(exc.error, exc.description, exc.status, exc.headers)


# -- token introspection (RFC 7662) ----------------------------------------------------------------

#: The claims of an active token that ``/introspect`` answers with (RFC 7662 §2.2).
INTROSPECTION_CLAIMS = ("scope", "client_id", "sub", "exp", "iat")


def introspection(target: Target, creds: ClientCredentials, token: str) -> dict[str, Any]:
    """The RFC 7662 §2.2 answer for ``token`` (synchronous: called in the threadpool).

    The caller must be a confidential client (§2.1); it then learns whether
    the target still honours the access token. Anything the target does not
    recognise, including a refresh token, is ``{"active": false}``.
    """
    authenticate_client(target, creds, confidential_only=True)
    inspect: Callable[[str], dict[str, Any] | None] | None = getattr(target, "introspect_access_token", None)
    if not callable(inspect):  # a reviewer's duck-typed target may have no way to tell
        raise TokenError("invalid_request", "this target cannot introspect tokens", 501)
    try:
        claims = inspect(token)
    except InternalError as exc:
        raise server_fault(exc, "introspection request") from None
    except OAuthError:
        claims = None
    if not isinstance(claims, dict):
        return {"active": False}
    answer: dict[str, Any] = {"active": True}
    answer.update((key, claims[key]) for key in INTROSPECTION_CLAIMS if key in claims)
    answer["token_type"] = "Bearer"
    return answer


def create_app(target: Target | None = None, *, read_timeout: float | None = None,
               clients: Collection[str] = SERVED_CLIENT_IDS, user_id: str = TEST_USER) -> Starlette:
    """The test authorization server over ``target``; with ``None``, one is built from the environment.

    From the environment: ``HARNESS_DATABASE_URL`` (or the embedded server),
    ``HARNESS_TARGET`` and ``HARNESS_AT_REST_PEPPER``: what ``harness serve``
    exports to its uvicorn workers. ``read_timeout`` bounds the time a body
    may take to arrive (default ``HARNESS_SERVE_READ_TIMEOUT_S`` or 10 s).
    ``/authorize`` serves only ``clients`` (and only those registered in the
    database) and consents for ``user_id``; registering them is the caller's
    job (``register_test_clients``), done once by ``harness serve``, never by
    a worker.
    """
    state: dict[str, Any] = {"target": target}
    body_timeout_s = read_timeout if read_timeout is not None else read_timeout_s()
    served_clients = frozenset(clients)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state["target"] is not None:
            yield
            return
        settings = Settings.from_env()
        db = await run_in_threadpool(connect, settings.database_url)
        try:
            state["target"] = load_target(settings.target, db)
            yield
        finally:
            await run_in_threadpool(db.close)

    def current() -> Target:
        found: Target | None = state["target"]
        if found is None:  # pragma: no cover - lifespan always sets it
            raise TokenError("server_error", "endpoint not initialised", 500)
        return found

    async def client_form(request: Request) -> tuple[dict[str, str], ClientCredentials]:
        """The form body and client credentials of a client-authenticated POST (/token, /introspect)."""
        if len(request.headers.getlist("authorization")) > 1:
            # Which one would count? A proxy and the app may each pick a different one.
            raise _invalid_request("more than one Authorization header")
        _check_content_type(request.headers.get("content-type"))
        form = parse_form(await read_body_within(request, body_timeout_s))
        return form, client_credentials(request.headers.get("authorization"), form)

    async def token(request: Request) -> Response:
        try:
            form, creds = await client_form(request)
            body = await run_with_deadline("token request", grant, current(), form, creds)
        except TokenError as exc:
            return error_response(exc.error, exc.description, exc.status, exc.headers)
        except Exception as exc:  # a lost database, a broken target: never a traceback
            failure = _failure(exc, "token request")
            return error_response(failure.error, failure.description, failure.status, failure.headers)
        return JSONResponse(body, headers=NO_STORE)

    async def authorize(request: Request) -> Response:
        # 1. Who asks, and where would the answer go? Until both are verified every error is a page
        #    for the user: RFC 6749 §4.1.2.1 forbids redirecting to an unverified URI (an open
        #    redirector would carry the error, or a code, to whoever named the URI).
        try:
            params = _query_params(request.scope.get("query_string", b""))
            client_id = _single(params, "client_id")
            redirect_uri = _single(params, "redirect_uri")
            if client_id is None:
                raise _invalid_request("missing client_id")
            registered: tuple[str, ...] | None = None
            if client_id in served_clients:
                registered = await run_with_deadline("authorization request", client_redirect_uris,
                                                     current(), client_id)
            if registered is None:
                raise TokenError("invalid_client", "unknown client_id")
            # Required even with one registered URI (§3.1.2.3 would allow omitting it): the code then
            # always records the URI the token request must repeat (§4.1.3).
            if redirect_uri is None:
                raise _invalid_request("missing redirect_uri")
            # Exact string comparison (RFC 9700 §2.1): no prefix, case or normalisation games.
            if redirect_uri not in registered or "#" in redirect_uri:
                raise _invalid_request("redirect_uri is not registered for this client")
        except TokenError as exc:
            return authorization_error_page(request, exc)
        except Exception as exc:  # a lost database, a broken target: a page, never a redirect
            return authorization_error_page(request, _failure(exc, "authorization request"))
        # 2. The URI is the client's own: every answer now goes there, with the state (§4.1.2.1).
        states = params.get("state", [])
        state_ = states[0] if len(states) == 1 and states[0] else None
        try:
            # Auto-consent: the configured test user approves at once (no login, no consent screen).
            code_params = authorization_code_params(params, client_id, redirect_uri, user_id)
            await run_with_deadline("authorization request", store_code, current(), code_params)
        except TokenError as exc:
            return authorization_redirect(redirect_uri, {"error": exc.error,
                                                         "error_description": exc.description}, state_)
        except Exception as exc:
            failure = _failure(exc, "authorization request")
            return authorization_redirect(redirect_uri, {"error": failure.error,
                                                         "error_description": failure.description}, state_)
        return authorization_redirect(redirect_uri, {"code": code_params.code}, state_)

    async def introspect(request: Request) -> Response:
        try:
            form, creds = await client_form(request)
            if "token" not in form:
                raise _invalid_request("missing token")
            # token_type_hint (§2.1) is optional and may be ignored: only access tokens are known.
            body = await run_with_deadline("introspection request", introspection, current(), creds,
                                           form["token"])
        except TokenError as exc:
            return error_response(exc.error, exc.description, exc.status, exc.headers)
        except Exception as exc:
            failure = _failure(exc, "introspection request")
            return error_response(failure.error, failure.description, failure.status, failure.headers)
        return JSONResponse(body, headers=NO_STORE)

    async def healthz(request: Request) -> Response:
        target_ = current()

        def probe() -> None:
            db: Database | None = getattr(target_, "db", None)
            if db is not None:
                with db.read_pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
                    conn.execute("SELECT 1")

        name = str(getattr(target_, "name", type(target_).__name__))
        failure: str | None = None
        # The pool's timeout answers a stopped database; the deadline, one that never answers.
        with anyio.move_on_after(HEALTH_TIMEOUT_S + 1) as deadline:
            try:
                await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
            except Exception as exc:  # any failure of the probe means "not healthy", never a 500 page
                failure = type(exc).__name__
        if deadline.cancelled_caught:
            failure = f"no answer within {HEALTH_TIMEOUT_S + 1:g} s"
        if failure is not None:
            log.error("health check failed: %s", failure)
            return JSONResponse({"status": "unavailable", "target": name}, status_code=503,
                                headers={**NO_STORE, "Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ok", "target": name, "database": "ok"}, headers=NO_STORE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response("invalid_request", str(exc.detail), exc.status_code,
                              dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error in the token endpoint: %s", type(exc).__name__)
        return error_response("server_error", "Internal server error", 500)

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error,
        Exception: server_error,
    }
    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/authorize", authorize, methods=["GET"]),
            Route("/introspect", introspect, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    # Starlette answers /token/ with a redirect whose Location it builds from the Host header
    # (Host: evil.example -> http://evil.example/token): a client that follows it with its POST
    # body hands the code and its secret to whoever that host is. A wrong path is a 404 here.
    app.router.redirect_slashes = False
    return app


def create_app_from_env() -> Starlette:
    """The uvicorn factory (``--factory``) for ``harness serve``; in a worker, tied to its supervisor."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if supervisor.isdigit() and int(supervisor) != os.getpid():
        exit_with_supervisor(int(supervisor))
    return create_app(None)


# -- serving: worker lifetime, Slowloris, access log ----------------------------------------------

#: ``<linux/prctl.h>``: deliver a signal to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def exit_with_supervisor(supervisor_pid: int) -> None:
    """Make this uvicorn worker exit when ``supervisor_pid`` (its parent) dies, even by SIGKILL.

    uvicorn's workers are spawned children that share the listening socket:
    if the supervisor is killed outright nobody stops them, and they go on
    serving, with a database lease and a pepper, on a port nobody watches.
    Linux delivers SIGTERM (uvicorn's graceful shutdown) at the parent's death
    (``prctl(PR_SET_PDEATHSIG)``); a watchdog thread covers other systems and
    a supervisor that died before the ``prctl``, and ends the process if the
    graceful shutdown has not within ``ORPHAN_GRACE_S``.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog alone does it
            pass
    threading.Thread(target=_watch_supervisor, args=(supervisor_pid,), name="harness-supervisor-watch",
                     daemon=True).start()


def _watch_supervisor(supervisor_pid: int, poll_s: float = 0.5) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(poll_s)
    log.error("the harness serve supervisor (pid %d) is gone: this worker exits", supervisor_pid)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head (Slowloris).

    uvicorn closes a keep-alive connection that stays silent after a response,
    but not one that sends nothing after connecting, or part of a request head
    and then nothing (or a byte now and then): each holds a socket and a slot
    for ever, and a few hundred of them (Slowloris) exhaust the server. Here
    the head must be complete within ``read_timeout_s()`` of the connection
    being made, or of the previous response: otherwise the connection gets a
    408 (RFC 9110 §15.5.9) if it had sent anything, and is closed. The body is
    the application's to time (``read_body_within``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = read_timeout_s()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head was parsed: a new request-response cycle
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # may already parse a pipelined request
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        partial_head = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial_head:
            # Written raw: h11 cannot send a response to a request it has not seen.
            body = (b'{"error": "invalid_request", "error_description": "the request head did not '
                    b'arrive in time"}')
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"cache-control: no-store\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        log.debug("closed a connection that sent no complete request head within %g s",
                  self.head_timeout_s)
        self.transport.close()


class AccessLogFilter(logging.Filter):
    """uvicorn's access log lines without the query string.

    The endpoint reads nothing from the query, but a client may put a code or
    a secret there; the access log keeps the client address, method, path
    and status, never what came with them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access: (client address, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].partition("?")[0], args[3], args[4])
        return True
