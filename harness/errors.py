"""The repository's error kinds, mirroring the seed's ``OauthError``.

Every way a secret can be wrong raises the same public message for its kind
(RFC 6749 §5.2 ``invalid_grant``): a caller can never tell an unknown code
from a spent or expired one by the message. ``detail`` holds the internal
reason for logs and evidence tables; it never holds a secret.
"""

from __future__ import annotations

INVALID_CODE = "Invalid authorization code"
INVALID_REFRESH_TOKEN = "Invalid refresh token"
REFRESH_TOKEN_EXPIRED = "Refresh token expired"


class OAuthError(Exception):
    """Base class: ``str(error)`` is the public message, ``detail`` the internal reason."""

    kind = "oauth"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message

    def __str__(self) -> str:
        return self.message


class ValidationError(OAuthError):
    """The request is invalid (``OauthError::Validation``): bad code, PKCE, redirect URI, input."""

    kind = "validation"


class TokenInvalidError(OAuthError):
    """A refresh token is unknown, consumed, revoked or bound to another client."""

    kind = "token_invalid"


class ExpiredError(OAuthError):
    """A refresh token is past its ``expires_at``."""

    kind = "expired"


class InternalError(OAuthError):
    """Server-side failure: no pepper, database error. Nothing was written."""

    kind = "internal"


class SetupError(Exception):
    """The harness itself cannot run: unknown target, unreachable database, bad settings."""
