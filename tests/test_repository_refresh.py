"""Refresh tokens on the faithful port: families, rotation, reuse (RFC 6749 §6, RFC 9700 §4.14.2)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import StoreToken, family_rows

from harness.clock import ManualClock
from harness.database import Database
from harness.errors import (
    INVALID_REFRESH_TOKEN,
    REFRESH_TOKEN_EXPIRED,
    ExpiredError,
    TokenInvalidError,
)
from harness.logs import capture
from harness.repository import OAuthRepository, RefreshTokenClaim, RefreshTokenParams
from harness.testing.plugin import CLIENT, OTHER_CLIENT, USER


def invalid(call: Callable[[], object]) -> TokenInvalidError:
    with pytest.raises(TokenInvalidError) as info:
        call()
    assert str(info.value) == INVALID_REFRESH_TOKEN
    return info.value


def test_store_starts_a_family_named_by_the_token_digest(
    db: Database, faithful: OAuthRepository, store_token: StoreToken
) -> None:
    family = store_token("rt-1")
    assert family == faithful.hash("rt-1")
    assert faithful.find_refresh_token_family("rt-1") == family
    # a token stored with a family joins it
    assert store_token("rt-2", family_id=family) == family
    assert [t for t, _ in family_rows(db, family)] == [faithful.hash("rt-1"), faithful.hash("rt-2")]
    assert faithful.find_refresh_token_family("unknown") is None


def test_find_client_id_from_refresh_token(faithful: OAuthRepository, store_token: StoreToken) -> None:
    store_token("rt-1", client_id=OTHER_CLIENT)
    assert faithful.find_client_id_from_refresh_token("rt-1") == OTHER_CLIENT
    assert faithful.find_client_id_from_refresh_token("unknown") is None


def test_revoke_refresh_token_family(db: Database, faithful: OAuthRepository,
                                     store_token: StoreToken) -> None:
    family = store_token("rt-1")
    store_token("rt-2", family_id=family)
    other = store_token("rt-other")
    assert faithful.revoke_refresh_token_family(family) == 2
    assert family_rows(db, family) == []
    assert len(family_rows(db, other)) == 1
    assert faithful.revoke_refresh_token_family(family) == 0


def test_revoke_refresh_token_deletes_one(db: Database, faithful: OAuthRepository,
                                          store_token: StoreToken) -> None:
    family = store_token("rt-1")
    store_token("rt-2", family_id=family)
    assert faithful.revoke_refresh_token("rt-1") is True
    assert faithful.revoke_refresh_token("rt-1") is False
    assert [t for t, _ in family_rows(db, family)] == [faithful.hash("rt-2")]


def test_validate_refresh_token_writes_nothing(db: Database, faithful: OAuthRepository,
                                               store_token: StoreToken) -> None:
    family = store_token("rt-1")
    expected = RefreshTokenClaim(USER, "openid", family, None)
    assert faithful.validate_refresh_token("rt-1", CLIENT) == expected
    assert faithful.validate_refresh_token("rt-1", CLIENT) == expected  # still live
    invalid(lambda: faithful.validate_refresh_token("rt-1", OTHER_CLIENT))
    invalid(lambda: faithful.validate_refresh_token("unknown", CLIENT))
    faithful.consume_refresh_token("rt-1", CLIENT)
    invalid(lambda: faithful.validate_refresh_token("rt-1", CLIENT))


def test_validate_expired_refresh_token(faithful: OAuthRepository, clock: ManualClock,
                                        store_token: StoreToken) -> None:
    store_token("rt-1", ttl_s=60)
    clock.advance(61)
    with pytest.raises(ExpiredError) as info:
        faithful.validate_refresh_token("rt-1", CLIENT)
    assert str(info.value) == REFRESH_TOKEN_EXPIRED


def test_consume_lifecycle(db: Database, faithful: OAuthRepository, clock: ManualClock,
                           store_token: StoreToken) -> None:
    family = store_token("rt-1")
    # 1. the first consume wins and tombstones the row (consumed_at = now)
    assert faithful.consume_refresh_token("rt-1", CLIENT) == RefreshTokenClaim(USER, "openid", family)
    assert family_rows(db, family) == [(faithful.hash("rt-1"), clock.now())]
    # 2. the second is reuse: refused, and the family is deleted
    with capture() as events:
        assert invalid(lambda: faithful.consume_refresh_token("rt-1", CLIENT)).detail == "reused token"
    assert family_rows(db, family) == []
    assert [(e.message, e.fields) for e in events] == [(
        "Refresh token reuse detected; revoked family",
        {"event": "refresh_token_reuse_detected", "family_id": family, "revoked_count": 1})]
    # 3. once the family is gone, the token is simply unknown
    with capture() as events:
        assert invalid(lambda: faithful.consume_refresh_token("rt-1", CLIENT)).detail == "unknown token"
    assert [e.message for e in events] == ["Refresh token not found"]


def test_rotation_kills_the_old_token(db: Database, faithful: OAuthRepository,
                                      store_token: StoreToken) -> None:
    family = store_token("rt-1")
    rotated = faithful.refresh("rt-1", CLIENT)
    assert rotated.family_id == family
    assert faithful.validate_refresh_token(rotated.refresh_token, CLIENT).family_id == family
    invalid(lambda: faithful.validate_refresh_token("rt-1", CLIENT))
    assert len(family_rows(db, family)) == 2  # old one kept as a consumed tombstone


def test_reuse_kills_the_family_newest_included(db: Database, faithful: OAuthRepository,
                                                store_token: StoreToken) -> None:
    family = store_token("rt-1")
    second = faithful.refresh("rt-1", CLIENT)
    third = faithful.refresh(second.refresh_token, CLIENT)
    bystander = store_token("rt-other")
    # the attacker replays the first, long-consumed token
    invalid(lambda: faithful.refresh("rt-1", CLIENT))
    assert family_rows(db, family) == []
    invalid(lambda: faithful.refresh(third.refresh_token, CLIENT))  # the legitimate newest is dead
    assert len(family_rows(db, bystander)) == 1


def test_client_binding(db: Database, faithful: OAuthRepository, store_token: StoreToken) -> None:
    family = store_token("rt-1")
    with capture() as events:
        assert invalid(lambda: faithful.consume_refresh_token("rt-1", OTHER_CLIENT)).detail == \
            "client mismatch"
    assert [e.message for e in events] == ["Refresh token presented by another client"]
    # nothing was written: the owner still refreshes
    assert family_rows(db, family) == [(faithful.hash("rt-1"), None)]
    assert faithful.refresh("rt-1", CLIENT).family_id == family


def test_consumed_token_presented_by_another_client_revokes_the_family(
    db: Database, faithful: OAuthRepository, store_token: StoreToken
) -> None:
    family = store_token("rt-1")
    faithful.refresh("rt-1", CLIENT)
    invalid(lambda: faithful.refresh("rt-1", OTHER_CLIENT))
    assert family_rows(db, family) == []


def test_refresh_token_expiry(db: Database, faithful: OAuthRepository, clock: ManualClock,
                              store_token: StoreToken) -> None:
    family = store_token("rt-1", ttl_s=60)
    # 1. exactly at expires_at the token is still good (expires_at >= now)
    clock.advance(60)
    faithful.consume_refresh_token("rt-1", CLIENT)
    # 2. a second token one microsecond past its expiry is refused, and not consumed
    store_token("rt-2", family_id=family, ttl_s=0)
    clock.advance(1e-6)
    with capture() as events, pytest.raises(ExpiredError) as info:
        faithful.refresh("rt-2", CLIENT)
    assert str(info.value) == REFRESH_TOKEN_EXPIRED
    assert [e.message for e in events] == ["Refresh token expired"]
    assert (faithful.hash("rt-2"), None) in family_rows(db, family)


def test_refresh_token_expiry_by_back_dating_the_row(db: Database, faithful: OAuthRepository,
                                                     store_token: StoreToken) -> None:
    store_token("rt-1")
    with db.connect() as conn:
        conn.execute("UPDATE oauth_refresh_tokens SET expires_at = now() - interval '1 day'")
    with pytest.raises(ExpiredError):
        faithful.refresh("rt-1", CLIENT)


def test_grace_window_lets_the_owner_retry(db: Database, make_target: Callable[..., OAuthRepository],
                                           clock: ManualClock) -> None:
    lenient = make_target("faithful", refresh_reuse_grace_s=10)
    lenient.store_refresh_token(lenient_params(lenient, "rt-1"))
    family = lenient.hash("rt-1")
    lenient.refresh("rt-1", CLIENT)
    # 1. within the window the owner's retry succeeds (a lost response), the family survives
    clock.advance(10)
    with capture() as events:
        retry = lenient.refresh("rt-1", CLIENT)
    assert retry.family_id == family
    assert [e.message for e in events] == ["Refresh token reused within grace window"]
    # 2. another client is never inside the window: reuse detection fires
    invalid(lambda: lenient.refresh("rt-1", OTHER_CLIENT))
    assert family_rows(db, family) == []


def test_grace_window_expires(db: Database, make_target: Callable[..., OAuthRepository],
                              clock: ManualClock) -> None:
    lenient = make_target("faithful", refresh_reuse_grace_s=10)
    lenient.store_refresh_token(lenient_params(lenient, "rt-1"))
    lenient.refresh("rt-1", CLIENT)
    clock.advance(10.001)
    invalid(lambda: lenient.refresh("rt-1", CLIENT))
    assert family_rows(db, lenient.hash("rt-1")) == []


def test_strict_policy_has_no_grace(db: Database, faithful: OAuthRepository,
                                    store_token: StoreToken) -> None:
    assert faithful.refresh_reuse_grace_s == 0
    family = store_token("rt-1")
    faithful.refresh("rt-1", CLIENT)
    invalid(lambda: faithful.refresh("rt-1", CLIENT))  # immediately, same client
    assert family_rows(db, family) == []


def test_cleanup_expired_refresh_tokens(db: Database, faithful: OAuthRepository, clock: ManualClock,
                                        store_token: StoreToken) -> None:
    short = store_token("rt-short", ttl_s=60)
    long = store_token("rt-long", ttl_s=3600)
    assert faithful.cleanup_expired_refresh_tokens() == 0
    clock.advance(60)
    assert faithful.cleanup_expired_refresh_tokens() == 0  # expires_at < now, strictly
    clock.advance(1)
    assert faithful.cleanup_expired_refresh_tokens() == 1
    assert family_rows(db, short) == []
    assert len(family_rows(db, long)) == 1


def lenient_params(target: OAuthRepository, token: str) -> RefreshTokenParams:
    return RefreshTokenParams(token_id=token, client_id=CLIENT, user_id=USER, scope="openid",
                              expires_at=target.clock.now() + timedelta(hours=1))
