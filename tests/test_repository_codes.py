"""Authorization codes on the faithful port (RFC 6749 §4.1.2, §4.1.3; RFC 7636 §4.6; RFC 6819 §5.2.2.3)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import REDIRECT, StoreCode, StoreToken, code_row, family_rows

from harness import rfc7636
from harness.clock import ManualClock
from harness.database import Database
from harness.errors import INVALID_CODE, ValidationError
from harness.logs import capture
from harness.repository import AuthCodeValidationResult
from harness.sut.faithful import AUTH_CODE_TTL_S, OAuthRepository
from harness.testing.plugin import CLIENT, OTHER_CLIENT, USER

VERIFIER = rfc7636.APPENDIX_B_VERIFIER
CHALLENGE = rfc7636.APPENDIX_B_CHALLENGE


def refused(call: object) -> ValidationError:
    """Run ``call`` and return the ValidationError it must raise with the public message."""
    assert callable(call)
    with pytest.raises(ValidationError) as info:
        call()
    assert str(info.value) == INVALID_CODE
    return info.value


def test_store_writes_one_row_expiring_in_600_s(
    db: Database, faithful: OAuthRepository, clock: ManualClock, store_code: StoreCode
) -> None:
    store_code("c1", resource="https://api.example")
    row = code_row(db, faithful.hash("c1"))
    assert row is not None
    assert row["expires_at"] == clock.now() + timedelta(seconds=AUTH_CODE_TTL_S)
    assert row["created_at"] == clock.now()
    assert row["used_at"] is None and row["refresh_token_id"] is None
    assert (row["client_id"], row["user_id"], row["redirect_uri"], row["scope"], row["resource"]) == (
        CLIENT, USER, REDIRECT, "openid profile", "https://api.example")


def test_storing_the_same_code_twice_is_refused_and_keeps_the_first(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    with pytest.raises(Exception) as info:
        store_code("c1", scope="admin")
    assert "psycopg" not in type(info.value).__module__  # wrapped, never a driver error
    row = code_row(db, faithful.hash("c1"))
    assert row is not None and row["scope"] == "openid profile"


def test_get_client_id_from_auth_code(faithful: OAuthRepository, store_code: StoreCode) -> None:
    store_code("c1")
    assert faithful.get_client_id_from_auth_code("c1") == CLIENT
    assert faithful.get_client_id_from_auth_code("unknown") is None


def test_lifecycle_and_single_use(db: Database, faithful: OAuthRepository, clock: ManualClock,
                                  store_code: StoreCode) -> None:
    store_code("c1", resource="https://api.example")
    # 1. first redemption: the claim returns the row's user, scope and resource
    result = faithful.validate_authorization_code("c1", CLIENT, REDIRECT)
    assert result == AuthCodeValidationResult(USER, "openid profile", "https://api.example")
    row = code_row(db, faithful.hash("c1"))
    assert row is not None and row["used_at"] == clock.now()
    # 2. second redemption: refused with the same public message as an unknown code
    refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT))
    refused(lambda: faithful.validate_authorization_code("never-issued", CLIENT, REDIRECT))


def test_redirect_uri_mismatch_is_refused_and_spends_the_code(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code(
            "c1", CLIENT, "https://evil.example/cb"))
    assert error.detail == "redirect_uri mismatch"
    assert [(e.message, e.fields) for e in events] == [(
        "Redirect URI mismatch", {"expected": "https://evil.example/cb", "actual": REDIRECT})]
    # the checks run after the claim (the seed's order): the legitimate retry now fails too
    refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT))


def test_redirect_uri_omitted_is_accepted_as_in_the_seed(
    faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    assert faithful.validate_authorization_code("c1", CLIENT, None).user_id == USER


def test_client_id_is_ignored_as_in_the_seed(faithful: OAuthRepository, store_code: StoreCode) -> None:
    # The seed's `_client_id` parameter is unused: another client redeems the code (a finding).
    store_code("c1")
    assert faithful.validate_authorization_code("c1", OTHER_CLIENT, REDIRECT).user_id == USER


def test_pkce_right_verifier(faithful: OAuthRepository, store_code: StoreCode) -> None:
    store_code("c1", code_challenge=CHALLENGE, code_challenge_method="S256")
    assert faithful.validate_authorization_code("c1", CLIENT, REDIRECT, VERIFIER).user_id == USER


def test_pkce_wrong_verifier(faithful: OAuthRepository, store_code: StoreCode) -> None:
    store_code("c1", code_challenge=CHALLENGE, code_challenge_method="S256")
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code(
            "c1", CLIENT, REDIRECT, VERIFIER[:-1] + "Y"))
    assert error.detail == "PKCE verifier mismatch"
    assert [e.message for e in events] == ["PKCE validation failed"]
    # the failed attempt spent the code: the right verifier is now refused too
    refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT, VERIFIER))


def test_pkce_missing_verifier(faithful: OAuthRepository, store_code: StoreCode) -> None:
    store_code("c1", code_challenge=CHALLENGE, code_challenge_method="S256")
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT, None))
    assert error.detail == "code_verifier missing"
    assert [e.message for e in events] == ["Missing code_verifier for PKCE challenge"]


def test_pkce_challenge_without_method_is_refused(faithful: OAuthRepository,
                                                  store_code: StoreCode) -> None:
    store_code("c1", code_challenge=CHALLENGE, code_challenge_method=None)
    with capture() as events:
        refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT, VERIFIER))
    assert [e.message for e in events] == ["Missing code_challenge_method for PKCE challenge"]


def test_pkce_plain_is_stored_but_never_redeemable(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    # `plain`: challenge == verifier. The schema accepts it, the seed only computes S256.
    store_code("c1", code_challenge=VERIFIER, code_challenge_method="plain")
    row = code_row(db, faithful.hash("c1"))
    assert row is not None and row["code_challenge_method"] == "plain"
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT, VERIFIER))
    assert error.detail == "unsupported code_challenge_method"
    assert [(e.message, e.fields) for e in events] == [(
        "Unsupported code_challenge_method", {"method": "plain", "error": "unsupported PKCE method"})]


def test_verifier_without_stored_challenge_is_ignored_as_in_the_seed(
    faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    assert faithful.validate_authorization_code("c1", CLIENT, REDIRECT, VERIFIER).user_id == USER


def test_expiry_through_the_clock(faithful: OAuthRepository, clock: ManualClock,
                                  store_code: StoreCode) -> None:
    store_code("c1")
    store_code("c2")
    # 1. exactly at expires_at the code is still good (the seed compares expires_at < now)
    clock.advance(AUTH_CODE_TTL_S)
    assert faithful.validate_authorization_code("c1", CLIENT, REDIRECT).user_id == USER
    # 2. one microsecond later it is expired
    clock.advance(1e-6)
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code("c2", CLIENT, REDIRECT))
    assert error.detail == "expired"
    assert [e.message for e in events] == ["Authorization code expired"]


def test_expiry_by_back_dating_the_row(db: Database, faithful: OAuthRepository,
                                       store_code: StoreCode) -> None:
    store_code("c1")
    with db.connect() as conn:
        conn.execute("UPDATE oauth_auth_codes SET expires_at = %s WHERE code = %s",
                     (faithful.clock.now() - timedelta(seconds=1), faithful.hash("c1")))
    assert refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT)).detail == "expired"


def test_link_stores_the_refresh_token_digest(
    db: Database, faithful: OAuthRepository, store_code: StoreCode, store_token: StoreToken
) -> None:
    store_code("c1")
    store_token("rt-1")
    faithful.link_auth_code_to_refresh_token("c1", "rt-1")
    row = code_row(db, faithful.hash("c1"))
    assert row is not None and row["refresh_token_id"] == faithful.hash("rt-1")


def test_replay_after_the_link_deletes_the_family(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    # 1. the exchange issues rt1 (new family) and links the code to it; a rotation adds rt2
    first = faithful.exchange_code("c1", CLIENT, REDIRECT)
    second = faithful.refresh(first.refresh_token, CLIENT)
    assert len(family_rows(db, first.family_id)) == 2
    # 2. the code is replayed: refused, and the whole family is deleted, the newest token too
    with capture() as events:
        error = refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT))
    assert error.detail == "replayed code"
    assert family_rows(db, first.family_id) == []
    assert faithful.find_refresh_token_family(second.refresh_token) is None
    # 3. the seed's warnings; the raw code in them is the seed's gap, reproduced on purpose
    #    (tracing::warn!(code = %code_str, ...)): the harness reports it as a finding.
    assert [(e.level, e.message, e.fields) for e in events] == [
        ("WARNING", "Authorization code replay detected", {"code": "c1"}),
        ("WARNING", "Revoked refresh-token family after auth-code replay",
         {"event": "auth_code_replay_detected", "code": "c1", "family_id": first.family_id,
          "revoked_count": 2}),
    ]


def test_replay_with_no_link_revokes_nothing(
    db: Database, faithful: OAuthRepository, store_code: StoreCode, store_token: StoreToken
) -> None:
    store_code("c1")
    unrelated = store_token("rt-x")
    faithful.validate_authorization_code("c1", CLIENT, REDIRECT)  # claimed, never linked
    with capture() as events:
        refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT))
    assert len(family_rows(db, unrelated)) == 1
    assert [(e.message, e.fields) for e in events] == [
        ("Authorization code replay detected", {"code": "c1"}),  # the raw code: the seed's gap
        ("No refresh token linked to replayed auth code",
         {"event": "auth_code_replay_detected", "code": "c1"}),
    ]


def test_replay_when_the_linked_token_is_gone(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    tokens = faithful.exchange_code("c1", CLIENT, REDIRECT)
    # The FK is ON DELETE SET NULL: deleting the token unlinks the code.
    assert faithful.revoke_refresh_token(tokens.refresh_token) is True
    row = code_row(db, faithful.hash("c1"))
    assert row is not None and row["refresh_token_id"] is None
    with capture() as events:
        refused(lambda: faithful.validate_authorization_code("c1", CLIENT, REDIRECT))
    assert [e.message for e in events] == ["Authorization code replay detected",
                                           "No refresh token linked to replayed auth code"]


def test_unknown_code_logs_not_found_without_the_code(faithful: OAuthRepository) -> None:
    with capture() as events:
        assert refused(lambda: faithful.validate_authorization_code(
            "nope", CLIENT, REDIRECT)).detail == "unknown code"
    assert [(e.message, e.fields) for e in events] == [("Authorization code not found", {})]
