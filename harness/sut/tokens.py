"""Token responses and self-contained access tokens (RFC 6749 §5.1)."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac

ACCESS_TOKEN_TTL_S = 3600
REFRESH_TOKEN_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Tokens:
    """A successful token response; ``family_id`` is the digest that names the refresh-token family."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    user_id: str
    family_id: str

    def response(self) -> dict[str, Any]:
        """The RFC 6749 §5.1 JSON body."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }


def new_refresh_token() -> str:
    """256 bits from the CSPRNG, base64url (RFC 6749 §10.10)."""
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(payload.encode("ascii"))
    return _b64(mac.finalize())


def issue_access_token(
    key: bytes, *, user_id: str, client_id: str, scope: str, family_id: str, now: datetime
) -> str:
    """A stateless, HMAC-signed bearer token (like a JWT): valid until ``exp`` whatever the database says."""
    claims = {
        "sub": user_id,
        "client_id": client_id,
        "scope": scope,
        "fam": family_id,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ACCESS_TOKEN_TTL_S,
        "jti": secrets.token_hex(8),
    }
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_sign(key, payload)}"


def verify_access_token(key: bytes, token: str, now: datetime) -> dict[str, Any] | None:
    """The claims of a well-signed, unexpired token, else ``None``."""
    payload, _, signature = token.partition(".")
    if not payload or not signature:
        return None
    try:
        expected = _sign(key, payload)
    except UnicodeEncodeError:
        return None
    if not secrets.compare_digest(expected, signature):
        return None
    try:
        claims: dict[str, Any] = json.loads(_unb64(payload))
    except ValueError:
        return None
    if int(claims.get("exp", 0)) < int(now.timestamp()):
        return None
    return claims
