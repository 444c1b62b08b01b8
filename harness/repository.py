"""The repository contract: what a target stores and returns, as the seed's ``OAuthRepository`` does.

The data types mirror the seed's (``AuthCodeParams``, ``AuthCodeValidationResult``) and
DESIGN.md's refresh-token half; ``check_input`` is the one gate every public method puts its
arguments through before any hashing or SQL. The faithful port itself is
``harness.sut.faithful.OAuthRepository`` (also importable from here, for the public face)::

    from harness.repository import AuthCodeParams, RefreshTokenParams, OAuthRepository
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from harness.errors import InternalError, ValidationError

if TYPE_CHECKING:
    from harness.sut.faithful import OAuthRepository

__all__ = [
    "MAX_INPUT_CHARS",
    "AuthCodeParams",
    "AuthCodeValidationResult",
    "OAuthRepository",
    "RefreshTokenClaim",
    "RefreshTokenParams",
    "check_input",
    "database_errors",
]

#: Inputs longer than this are refused before any hashing or SQL (1 MB codes are an attack, not a code).
MAX_INPUT_CHARS = 4096

@dataclass(frozen=True)
class AuthCodeParams:
    """The seed's ``AuthCodeParams``: what the authorization endpoint stores."""

    code: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    resource: str | None = None


@dataclass(frozen=True)
class AuthCodeValidationResult:
    """The seed's ``AuthCodeValidationResult``."""

    user_id: str
    scope: str
    resource: str | None


@dataclass(frozen=True)
class RefreshTokenParams:
    """A refresh token to store; ``family_id=None`` starts a new family named by its own digest."""

    token_id: str
    client_id: str
    user_id: str
    scope: str
    expires_at: datetime
    family_id: str | None = None
    resource: str | None = None


@dataclass(frozen=True)
class RefreshTokenClaim:
    """What consuming (or validating) a refresh token yields."""

    user_id: str
    scope: str
    family_id: str
    resource: str | None = None


def check_input(value: object, *, what: str, message: str, optional: bool = False) -> None:
    """Refuse empty, oversized, NUL-containing or unencodable text before it reaches SQL.

    The error is the kind's public message (``message``); ``detail`` says which
    input and why, never the value itself.
    """
    if value is None:
        if optional:
            return
        raise ValidationError(message, detail=f"{what} is missing")
    if not isinstance(value, str):
        raise ValidationError(message, detail=f"{what} is not text")
    if value == "":
        raise ValidationError(message, detail=f"{what} is empty")
    if len(value) > MAX_INPUT_CHARS:
        raise ValidationError(message, detail=f"{what} is longer than {MAX_INPUT_CHARS} characters")
    if "\x00" in value:
        raise ValidationError(message, detail=f"{what} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(message, detail=f"{what} is not valid Unicode") from None


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a driver error into the seed's internal error, keeping the cause for histories."""
    try:
        yield
    except psycopg.Error as exc:
        raise InternalError("Internal server error", detail=f"database: {type(exc).__name__}") from exc


def __getattr__(name: str) -> Any:
    # The port lives with the other systems under test; imported lazily, since it imports this.
    if name == "OAuthRepository":
        from harness.sut.faithful import OAuthRepository

        return OAuthRepository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
