"""PKCE (RFC 7636): challenge derivation and verifier syntax."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

#: RFC 7636 §4.1: ``code-verifier = 43*128unreserved``, unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

#: RFC 7636 Appendix B.
APPENDIX_B_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
APPENDIX_B_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def s256_challenge(verifier: str) -> str:
    """``BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))`` without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_is_well_formed(verifier: str) -> bool:
    """Whether ``verifier`` has RFC 7636 §4.1 length (43–128) and charset."""
    return VERIFIER_RE.fullmatch(verifier) is not None


def constant_time_equal(a: str, b: str) -> bool:
    """Compare without an early exit (the seed's ``subtle::ConstantTimeEq``)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def new_verifier() -> str:
    """A fresh 43-character verifier (32 random octets, base64url)."""
    return secrets.token_urlsafe(32)
