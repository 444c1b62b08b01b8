"""An RFC 6749 token endpoint (§3.2, §4.1.3, §6, §5) over any target, as a Starlette ASGI app."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.at_rest import hash_at_rest
from harness.database import Database, connect
from harness.errors import InternalError, OAuthError
from harness.repository import MAX_INPUT_CHARS
from harness.settings import Settings
from harness.targets import Target, load_target

log = logging.getLogger("harness.http")

#: Bodies above this are refused before they are read in full: a token request is a few hundred bytes.
MAX_BODY_BYTES = 16 * 1024
#: More fields than any grant needs is an attack on the parser, not a request.
MAX_FIELDS = 32
FORM_TYPE = "application/x-www-form-urlencoded"
#: RFC 6749 §5.1 / §5.2: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


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


def parse_form(body: bytes) -> dict[str, str]:
    """Parse a form body strictly (RFC 6749 §3.2, Appendix B); blank values count as omitted.

    Refused: non-ASCII bytes (form encoding is ASCII on the wire), invalid
    percent escapes, escapes that do not decode to UTF-8, fields without
    ``=``, NUL characters, values longer than the repository accepts, and any
    parameter sent more than once (§3.2: "MUST NOT be included more than once").
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise _invalid_request("the form body contains bytes that are not form-urlencoded") from None
    if _BAD_PERCENT.search(text):
        raise _invalid_request("the form body contains an invalid percent escape")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8",
                          errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise _invalid_request("a form value is not valid UTF-8") from None
    except ValueError:
        raise _invalid_request("malformed form body") from None
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise _invalid_request("a form parameter contains a NUL character")
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


def client_credentials(authorization: str | None, form: dict[str, str]) -> ClientCredentials:
    """Client id and secret from HTTP Basic or the body, never both (RFC 6749 §2.3)."""
    if authorization is not None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise TokenError("invalid_client", "unsupported client authentication scheme", 401,
                             {"WWW-Authenticate": 'Basic realm="token"'})
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise TokenError("invalid_client", "malformed Basic credentials", 401,
                             {"WWW-Authenticate": 'Basic realm="token"'}) from None
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep or not raw_id:
            raise TokenError("invalid_client", "malformed Basic credentials", 401,
                             {"WWW-Authenticate": 'Basic realm="token"'})
        if "client_secret" in form:
            raise _invalid_request("more than one client authentication method (RFC 6749 §2.3)")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if "client_id" in form and form["client_id"] != client_id:
            raise _invalid_request("client_id in the body differs from the authenticated client")
        return ClientCredentials(client_id, secret, basic=True)
    if "client_id" not in form:
        raise _invalid_request("missing client_id")
    return ClientCredentials(form["client_id"], form.get("client_secret"), basic=False)


def authenticate_client(target: Target, creds: ClientCredentials) -> None:
    """The client must exist in ``oauth_clients``; a client with a ``client_secret_hash`` must prove it.

    ``client_secret_hash`` holds ``hash_at_rest(secret)`` (the deployment
    pepper's HMAC); a client without one is public (RFC 6749 §2.1) and a
    secret it sends is ignored. A target without a ``db`` is not checked.
    """
    db: Database | None = getattr(target, "db", None)
    if db is None:
        return
    challenge = {"WWW-Authenticate": 'Basic realm="token"'} if creds.basic else None
    with db.read_pool.connection() as conn:
        row = conn.execute(
            "SELECT client_secret_hash FROM oauth_clients WHERE client_id = %s", (creds.client_id,)
        ).fetchone()
    if row is None:
        raise TokenError("invalid_client", "client authentication failed", 401, challenge)
    stored: str | None = row[0]
    if stored is None:
        return
    if creds.secret is None:
        raise TokenError("invalid_client", "client authentication failed", 401, challenge)
    presented = hash_at_rest(creds.secret, getattr(target, "pepper", None))
    if not hmac.compare_digest(presented.encode(), stored.encode()):
        raise TokenError("invalid_client", "client authentication failed", 401, challenge)


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
        log.error("token request failed: %s", exc.detail)
        raise TokenError("server_error", "Internal server error", 500) from None
    except OAuthError as exc:
        raise TokenError("invalid_grant", str(exc)) from None
    return tokens.response()


def create_app(target: Target | None = None) -> Starlette:
    """The token endpoint over ``target``; with ``None``, one is built from the environment at startup.

    From the environment: ``HARNESS_DATABASE_URL`` (or the embedded server),
    ``HARNESS_TARGET`` and ``HARNESS_AT_REST_PEPPER``: what ``harness serve``
    exports to its uvicorn workers.
    """
    state: dict[str, Any] = {"target": target}

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

    async def token(request: Request) -> Response:
        try:
            _check_content_type(request.headers.get("content-type"))
            form = parse_form(await read_body(request))
            creds = client_credentials(request.headers.get("authorization"), form)
            body = await run_in_threadpool(grant, current(), form, creds)
        except TokenError as exc:
            return error_response(exc.error, exc.description, exc.status, exc.headers)
        except Exception as exc:  # a lost database, a broken target: a 500 body, never a traceback
            log.error("token request failed: %s", type(exc).__name__)
            return error_response("server_error", "Internal server error", 500)
        return JSONResponse(body, headers=NO_STORE)

    async def healthz(request: Request) -> Response:
        target_ = current()

        def probe() -> None:
            db: Database | None = getattr(target_, "db", None)
            if db is not None:
                with db.read_pool.connection() as conn:
                    conn.execute("SELECT 1")

        name = str(getattr(target_, "name", type(target_).__name__))
        try:
            await run_in_threadpool(probe)
        except Exception as exc:  # any failure of the probe means "not healthy", never a 500 page
            log.error("health check failed: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "target": name}, status_code=503,
                                headers=NO_STORE)
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
    return Starlette(
        routes=[Route("/token", token, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def create_app_from_env() -> Starlette:
    """The uvicorn factory (``--factory``) for ``harness serve --workers N``."""
    return create_app(None)
