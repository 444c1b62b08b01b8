"""The two grant flows on the faithful port: ``exchange_code`` (RFC 6749 §4.1.3) and ``refresh`` (§6)."""

from __future__ import annotations

import pytest
from conftest import REDIRECT, StoreCode, code_row, family_rows

from harness import rfc7636
from harness.clock import ManualClock
from harness.database import Database
from harness.errors import INVALID_CODE, INVALID_REFRESH_TOKEN, TokenInvalidError, ValidationError
from harness.repository import OAuthRepository
from harness.sut.tokens import ACCESS_TOKEN_TTL_S
from harness.testing.plugin import CLIENT, USER


def test_exchange_issues_a_new_family_and_links_the_code(
    db: Database, faithful: OAuthRepository, clock: ManualClock, store_code: StoreCode
) -> None:
    verifier = rfc7636.new_verifier()
    store_code("c1", code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256")
    tokens = faithful.exchange_code("c1", CLIENT, REDIRECT, verifier)
    # the refresh token starts its own family, named by its own digest
    assert tokens.family_id == faithful.hash(tokens.refresh_token)
    assert family_rows(db, tokens.family_id) == [(tokens.family_id, None)]
    # the code row is spent and linked to that token's digest
    row = code_row(db, faithful.hash("c1"))
    assert row is not None
    assert row["used_at"] == clock.now() and row["refresh_token_id"] == tokens.family_id
    # RFC 6749 §5.1 body
    body = tokens.response()
    assert body == {"access_token": tokens.access_token, "token_type": "Bearer",
                    "expires_in": ACCESS_TOKEN_TTL_S, "refresh_token": tokens.refresh_token,
                    "scope": "openid profile"}
    claims = faithful.introspect_access_token(tokens.access_token)
    assert claims is not None
    assert (claims["sub"], claims["client_id"], claims["fam"]) == (USER, CLIENT, tokens.family_id)


def test_exchange_steps_run_in_the_seed_order(faithful: OAuthRepository, store_code: StoreCode) -> None:
    steps: list[str] = []
    faithful.hooks.append(steps.append)
    store_code("c1")
    tokens = faithful.exchange_code("c1", CLIENT, REDIRECT)
    faithful.refresh(tokens.refresh_token, CLIENT)
    assert steps == ["after_claim", "after_validate", "before_link", "after_link", "after_consume"]


def test_failed_exchange_issues_nothing(db: Database, faithful: OAuthRepository,
                                        store_code: StoreCode) -> None:
    store_code("c1", code_challenge=rfc7636.s256_challenge(rfc7636.new_verifier()),
               code_challenge_method="S256")
    with pytest.raises(ValidationError) as info:
        faithful.exchange_code("c1", CLIENT, REDIRECT, rfc7636.new_verifier())
    assert str(info.value) == INVALID_CODE
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM oauth_refresh_tokens").fetchone() == (0,)


def test_refresh_chain_then_code_replay_revokes_everything(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    store_code("c1")
    # 1. exchange, then rotate three times: one family of four, three consumed
    tokens = [faithful.exchange_code("c1", CLIENT, REDIRECT)]
    for _ in range(3):
        tokens.append(faithful.refresh(tokens[-1].refresh_token, CLIENT))
    family = tokens[0].family_id
    assert {t.family_id for t in tokens} == {family}
    states = family_rows(db, family)
    assert [consumed is None for _, consumed in states] == [False, False, False, True]
    # 2. the newest refreshes fine; replaying the code then revokes the whole family
    newest = faithful.refresh(tokens[-1].refresh_token, CLIENT)
    with pytest.raises(ValidationError):
        faithful.exchange_code("c1", CLIENT, REDIRECT)
    assert family_rows(db, family) == []
    with pytest.raises(TokenInvalidError) as info:
        faithful.refresh(newest.refresh_token, CLIENT)
    assert str(info.value) == INVALID_REFRESH_TOKEN


def test_access_tokens_outlive_the_revoked_family(faithful: OAuthRepository,
                                                  store_code: StoreCode) -> None:
    # Self-contained access tokens are checked by signature and expiry only: revoking the
    # family does not reach them (RFC 6819 §5.2.2.3 asks for it; a finding for the scan).
    store_code("c1")
    tokens = faithful.exchange_code("c1", CLIENT, REDIRECT)
    with pytest.raises(ValidationError):
        faithful.exchange_code("c1", CLIENT, REDIRECT)
    assert faithful.introspect_access_token(tokens.access_token) is not None
    assert faithful.introspect_access_token(tokens.access_token + "x") is None


def test_access_token_expires(faithful: OAuthRepository, clock: ManualClock,
                              store_code: StoreCode) -> None:
    store_code("c1")
    tokens = faithful.exchange_code("c1", CLIENT, REDIRECT)
    clock.advance(ACCESS_TOKEN_TTL_S + 1)
    assert faithful.introspect_access_token(tokens.access_token) is None
