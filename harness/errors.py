"""The repository's error kinds, mirroring the seed's ``OauthError``, and their one wire mapping.

Every way a secret can be wrong raises the same public message for its kind
(RFC 6749 §5.2 ``invalid_grant``): a caller can never tell an unknown code
from a spent or expired one by the message. ``detail`` holds the internal
reason for logs and evidence tables; it never holds a secret.

Each kind carries its RFC 6749 §5.2 ``error`` code and HTTP status (as
Authlib's ``InvalidGrantError.error = "invalid_grant"``): the token
endpoint writes them, the HTTP target and Locust read them back with
:func:`from_wire`, so all three agree.
"""

from __future__ import annotations

INVALID_CODE = "Invalid authorization code"
INVALID_REFRESH_TOKEN = "Invalid refresh token"
REFRESH_TOKEN_EXPIRED = "Refresh token expired"


class OAuthError(Exception):
    """Base class: ``str(error)`` is the public message, ``detail`` the internal reason."""

    kind = "oauth"
    #: RFC 6749 §5.2 error code and HTTP status of this kind on the wire.
    error = "invalid_request"
    status = 400

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message

    def __str__(self) -> str:
        return self.message


class ValidationError(OAuthError):
    """The request is invalid (``OauthError::Validation``): bad code, PKCE, redirect URI, input."""

    kind = "validation"
    error = "invalid_grant"


class TokenInvalidError(OAuthError):
    """A refresh token is unknown, consumed, revoked or bound to another client."""

    kind = "token_invalid"
    error = "invalid_grant"


class ExpiredError(OAuthError):
    """A refresh token is past its ``expires_at``."""

    kind = "expired"
    error = "invalid_grant"


class InternalError(OAuthError):
    """Server-side failure: no pepper, database error. Nothing was written."""

    kind = "internal"
    error = "server_error"
    status = 500


class IndeterminateError(InternalError):
    """Nobody can know whether the request took effect: a lost connection, a 5xx, a timeout.

    Histories record it as ``info`` (Jepsen): never a win, never a loss.
    """

    kind = "indeterminate"


class RemoteOAuthError(OAuthError):
    """A refusal read off the wire (RFC 6749 §5.2): ``kind`` is the ``error`` code the server sent."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(description or error, detail=f"HTTP {status} {error}")
        self.kind = error
        self.error = error
        self.status = status


def from_wire(status: int, body: object) -> OAuthError:
    """The error a token endpoint's response stands for (RFC 6749 §5.2); 5xx is indeterminate."""
    error, description = "", ""
    if isinstance(body, dict):
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or "")
    if status >= 500 or (status == 503 and error == "temporarily_unavailable"):
        return IndeterminateError("Internal server error", detail=f"HTTP {status} {error}".strip())
    if not error:
        return IndeterminateError("Unreadable response", detail=f"HTTP {status} without an RFC 6749 "
                                  "error body")
    return RemoteOAuthError(error, description, status)


class SetupError(Exception):
    """The harness itself cannot run: unknown target, unreachable database, bad settings."""
