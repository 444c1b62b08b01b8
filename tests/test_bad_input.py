"""Bad input at every entry point: the public message, never a driver error, and nothing written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import REDIRECT, StoreCode, code_row, dump_all, row_counts

from harness import rfc7636
from harness.database import Database
from harness.errors import (
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    InternalError,
    OAuthError,
    TokenInvalidError,
    ValidationError,
)
from harness.repository import AuthCodeParams, OAuthRepository, RefreshTokenParams
from harness.testing.plugin import CLIENT, USER

#: Refused before any hashing or SQL.
BAD = {
    "empty": "",
    "1MB": "x" * 1_000_000,
    "NUL": "co\x00de",
    "lone-surrogate": "\ud800abc",
}
VERIFIER = rfc7636.new_verifier()

Call = Callable[[OAuthRepository, str], object]


def code_params(**overrides: str) -> AuthCodeParams:
    fields = {"code": "c-new", "client_id": CLIENT, "user_id": USER, "redirect_uri": REDIRECT,
              "scope": "openid", **overrides}
    return AuthCodeParams(**fields)


def token_params(**overrides: str) -> RefreshTokenParams:
    fields = {"token_id": "rt-new", "client_id": CLIENT, "user_id": USER, "scope": "openid",
              **overrides}
    return RefreshTokenParams(expires_at=datetime.now(UTC) + timedelta(days=1), **fields)


#: entry point → (call with the bad value in one argument, the public message expected).
CODE_SIDE: dict[str, Call] = {
    "store.code": lambda t, v: t.store_authorization_code(code_params(code=v)),
    "store.client_id": lambda t, v: t.store_authorization_code(code_params(client_id=v)),
    "store.user_id": lambda t, v: t.store_authorization_code(code_params(user_id=v)),
    "store.redirect_uri": lambda t, v: t.store_authorization_code(code_params(redirect_uri=v)),
    "store.scope": lambda t, v: t.store_authorization_code(code_params(scope=v)),
    "store.code_challenge": lambda t, v: t.store_authorization_code(
        code_params(code_challenge=v, code_challenge_method="S256")),
    "get_client_id.code": lambda t, v: t.get_client_id_from_auth_code(v),
    "validate.code": lambda t, v: t.validate_authorization_code(v, CLIENT, REDIRECT, VERIFIER),
    "validate.client_id": lambda t, v: t.validate_authorization_code("c1", v, REDIRECT, VERIFIER),
    "validate.redirect_uri": lambda t, v: t.validate_authorization_code("c1", CLIENT, v, VERIFIER),
    "validate.code_verifier": lambda t, v: t.validate_authorization_code("c1", CLIENT, REDIRECT, v),
    "exchange.code": lambda t, v: t.exchange_code(v, CLIENT, REDIRECT, VERIFIER),
    "exchange.client_id": lambda t, v: t.exchange_code("c1", v, REDIRECT, VERIFIER),
    "exchange.redirect_uri": lambda t, v: t.exchange_code("c1", CLIENT, v, VERIFIER),
    "exchange.code_verifier": lambda t, v: t.exchange_code("c1", CLIENT, REDIRECT, v),
    "link.code": lambda t, v: t.link_auth_code_to_refresh_token(v, "rt-1"),
}
TOKEN_SIDE: dict[str, Call] = {
    "link.refresh_token_id": lambda t, v: t.link_auth_code_to_refresh_token("c1", v),
    "store_refresh.token_id": lambda t, v: t.store_refresh_token(token_params(token_id=v)),
    "store_refresh.client_id": lambda t, v: t.store_refresh_token(token_params(client_id=v)),
    "store_refresh.family_id": lambda t, v: t.store_refresh_token(token_params(family_id=v)),
    "refresh.token": lambda t, v: t.refresh(v, CLIENT),
    "refresh.client_id": lambda t, v: t.refresh("rt-1", v),
    "consume.token": lambda t, v: t.consume_refresh_token(v, CLIENT),
    "consume.client_id": lambda t, v: t.consume_refresh_token("rt-1", v),
    "validate_refresh.token": lambda t, v: t.validate_refresh_token(v, CLIENT),
    "validate_refresh.client_id": lambda t, v: t.validate_refresh_token("rt-1", v),
    "find_family.token": lambda t, v: t.find_refresh_token_family(v),
    "find_client.token": lambda t, v: t.find_client_id_from_refresh_token(v),
    "revoke.token": lambda t, v: t.revoke_refresh_token(v),
    "revoke_family.family_id": lambda t, v: t.revoke_refresh_token_family(v),
}
CASES = [(name, call, INVALID_CODE) for name, call in CODE_SIDE.items()] + [
    (name, call, INVALID_REFRESH_TOKEN) for name, call in TOKEN_SIDE.items()]


@pytest.fixture
def stored(db: Database, faithful: OAuthRepository, store_code: StoreCode) -> OAuthRepository:
    """A PKCE code ``c1`` and a live refresh token ``rt-1``, both untouched."""
    store_code("c1", code_challenge=rfc7636.s256_challenge(VERIFIER), code_challenge_method="S256")
    faithful.store_refresh_token(token_params(token_id="rt-1"))
    return faithful


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_bad_values_are_refused_everywhere_and_write_nothing(
    bad: str, db: Database, stored: OAuthRepository
) -> None:
    before = dump_all(db)
    for name, call, message in CASES:
        # 1. refused with the kind's public message; detail names the input, never the value
        with pytest.raises(OAuthError) as info:
            call(stored, bad)
        assert isinstance(info.value, ValidationError | TokenInvalidError), name
        assert str(info.value) == message, name
        assert len(info.value.detail) < 100, name
    # 2. nothing was written, not even a claim
    assert dump_all(db) == before
    # 3. the stored code and token were untouched by the bad input: both still redeem
    assert stored.exchange_code("c1", CLIENT, REDIRECT, VERIFIER).user_id == USER
    assert stored.refresh("rt-1", CLIENT).user_id == USER


def test_non_ascii_is_ordinary_text_and_round_trips(db: Database, faithful: OAuthRepository) -> None:
    client, code, verifier = "клиент-ü", "код-😀-ü", "ü" * 43
    redirect = "https://пример.example/cb?q=ü"
    db.ensure_party(client, USER)
    faithful.store_authorization_code(AuthCodeParams(
        code=code, client_id=client, user_id=USER, redirect_uri=redirect, scope="openid",
        code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256"))
    assert faithful.get_client_id_from_auth_code(code) == client
    # the seed hashes any text it is given: a non-RFC 7636 verifier redeems (a finding for the scan)
    tokens = faithful.exchange_code(code, client, redirect, verifier)
    assert faithful.refresh(tokens.refresh_token, client).family_id == tokens.family_id


@pytest.mark.parametrize(("call", "message"), [
    pytest.param(lambda t: t.validate_authorization_code("код-😀", CLIENT, REDIRECT), INVALID_CODE,
                 id="validate.code"),
    pytest.param(lambda t: t.exchange_code("код-😀", CLIENT, REDIRECT), INVALID_CODE,
                 id="exchange.code"),
    pytest.param(lambda t: t.refresh("токен-😀", CLIENT), INVALID_REFRESH_TOKEN, id="refresh.token"),
    pytest.param(lambda t: t.refresh("rt-1", "клиент-ü"), INVALID_REFRESH_TOKEN,
                 id="refresh.client_id"),
    pytest.param(lambda t: t.consume_refresh_token("rt-1", "клиент-ü"), INVALID_REFRESH_TOKEN,
                 id="consume.client_id"),
])
def test_unknown_non_ascii_values_are_refused_and_write_nothing(
    call: Callable[[OAuthRepository], object], message: str,
    db: Database, stored: OAuthRepository,
) -> None:
    before = dump_all(db)
    with pytest.raises(OAuthError) as info:
        call(stored)
    assert isinstance(info.value, ValidationError | TokenInvalidError)
    assert str(info.value) == message
    assert dump_all(db) == before
    assert stored.exchange_code("c1", CLIENT, REDIRECT, VERIFIER).user_id == USER
    assert stored.refresh("rt-1", CLIENT).user_id == USER


@pytest.mark.parametrize("field", ["redirect_uri", "code_verifier"])
def test_non_ascii_mismatch_on_a_stored_code_is_refused_after_the_claim(
    field: str, db: Database, stored: OAuthRepository
) -> None:
    counts = row_counts(db)
    arguments = {"redirect_uri": REDIRECT, "code_verifier": VERIFIER, field: "ü" * 43}
    with pytest.raises(ValidationError) as info:
        stored.exchange_code("c1", CLIENT, **arguments)
    assert str(info.value) == INVALID_CODE
    assert row_counts(db) == counts  # no token issued
    # the seed checks after its claim, so the mismatch spent the code (its documented order)
    row = code_row(db, stored.hash("c1"))
    assert row is not None and row["used_at"] is not None


def test_unregistered_client_on_store_is_not_a_driver_error_and_writes_nothing(
    db: Database, faithful: OAuthRepository
) -> None:
    counts = row_counts(db)
    with pytest.raises(InternalError) as info:
        faithful.store_authorization_code(code_params(client_id="клиент-unregistered"))
    assert not isinstance(info.value, psycopg.Error)
    assert str(info.value) == "Internal server error"
    assert info.value.detail == "database: ForeignKeyViolation"
    assert row_counts(db) == counts


def test_unregistered_client_on_exchange_spends_the_code_then_fails_internally(
    db: Database, stored: OAuthRepository
) -> None:
    # The seed ignores client_id in the claim; issuing the refresh token then hits the
    # oauth_clients foreign key. A real token endpoint authenticates the client first
    # (RFC 6749 §3.2.1); the repository-level flow does not, so the code is lost.
    counts = row_counts(db)
    with pytest.raises(InternalError):
        stored.exchange_code("c1", "клиент-unregistered", REDIRECT, VERIFIER)
    assert row_counts(db) == counts
    row = code_row(db, stored.hash("c1"))
    assert row is not None and row["used_at"] is not None and row["refresh_token_id"] is None
