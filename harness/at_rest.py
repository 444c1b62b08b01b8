"""Hashing at rest: the seed's ``hash_at_rest`` (HMAC-SHA-256 under the deployment pepper)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

from harness.errors import InternalError

PEPPER_UNAVAILABLE = "pepper unavailable"


def hash_at_rest(value: str, pepper: str | bytes | None) -> str:
    """Lowercase-hex HMAC-SHA-256 of ``value`` (UTF-8) keyed by ``pepper``.

    A missing or empty pepper is an internal error, never a silent default:
    an unkeyed digest of a guessable code would be a plain lookup table.
    """
    if not pepper:
        raise InternalError(PEPPER_UNAVAILABLE, detail="HARNESS_AT_REST_PEPPER is not set")
    key = pepper.encode() if isinstance(pepper, str) else pepper
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(value.encode("utf-8", "surrogatepass"))
    return mac.finalize().hex()
