"""PKCE helpers against RFC 7636 (Appendix B vector, §4.1 verifier syntax, §4.2 S256)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from conftest import REDIRECT, StoreCode

from harness import rfc7636
from harness.errors import ValidationError
from harness.repository import OAuthRepository
from harness.testing.plugin import CLIENT, USER

# RFC 7636 Appendix B, copied from the RFC text (not from the harness).
VERIFIER_OCTETS = bytes([116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173,
                         187, 186, 22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83,
                         132, 141, 121])
CODE_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
SHA256_OCTETS = bytes([19, 211, 30, 150, 26, 26, 216, 236, 47, 22, 177, 12, 76, 152, 46, 8,
                       118, 168, 120, 173, 109, 241, 68, 86, 110, 225, 137, 74, 203, 112,
                       249, 195])
CODE_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_appendix_b_vector() -> None:
    verifier = base64.urlsafe_b64encode(VERIFIER_OCTETS).rstrip(b"=").decode()
    assert verifier == CODE_VERIFIER
    assert hashlib.sha256(verifier.encode("ascii")).digest() == SHA256_OCTETS
    assert rfc7636.s256_challenge(verifier) == CODE_CHALLENGE
    # the harness's published constants are the RFC's
    assert rfc7636.APPENDIX_B_VERIFIER == CODE_VERIFIER
    assert rfc7636.APPENDIX_B_CHALLENGE == CODE_CHALLENGE


def test_appendix_b_vector_redeems_through_the_repository(
    faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1", code_challenge=CODE_CHALLENGE, code_challenge_method="S256")
    store_code("c2", code_challenge=CODE_CHALLENGE, code_challenge_method="S256")
    assert faithful.validate_authorization_code("c1", CLIENT, REDIRECT, CODE_VERIFIER).user_id == USER
    with pytest.raises(ValidationError):  # the challenge itself is not the verifier
        faithful.validate_authorization_code("c2", CLIENT, REDIRECT, CODE_CHALLENGE)


@pytest.mark.parametrize(("verifier", "well_formed"), [
    ("a" * 43, True),
    ("a" * 128, True),
    ("A-Z.a_z~0" * 5, True),
    ("a" * 42, False),  # §4.1: at least 43
    ("a" * 129, False),  # §4.1: at most 128
    ("a" * 42 + "+", False),  # base64 (not base64url) alphabet
    ("a" * 42 + "=", False),
    ("a" * 42 + " ", False),
    ("a" * 42 + "é", False),
    ("a" * 42 + "\x00", False),
    ("", False),
])
def test_verifier_syntax(verifier: str, well_formed: bool) -> None:
    assert rfc7636.verifier_is_well_formed(verifier) is well_formed


def test_new_verifier_is_well_formed_and_fresh() -> None:
    verifiers = {rfc7636.new_verifier() for _ in range(100)}
    assert len(verifiers) == 100
    assert all(rfc7636.verifier_is_well_formed(v) and len(v) == 43 for v in verifiers)


def test_constant_time_equal() -> None:
    assert rfc7636.constant_time_equal("abc", "abc")
    assert not rfc7636.constant_time_equal("abc", "abd")
    assert not rfc7636.constant_time_equal("abc", "abcd")
    assert not rfc7636.constant_time_equal("é", "e")
