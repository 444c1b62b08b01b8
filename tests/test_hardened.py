"""The hardened target: each closed finding, straight against the repository (see its docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import REDIRECT, code_row

from harness import rfc7636
from harness.clock import ManualClock
from harness.database import Database
from harness.errors import INVALID_CODE, OAuthError, TokenInvalidError, ValidationError
from harness.logs import capture
from harness.race import race_threads, seed_codes
from harness.repository import AuthCodeParams, OAuthRepository
from harness.sut.hardened import REVOKED, HardenedRepository
from harness.testing.plugin import CLIENT, OTHER_CLIENT, USER

MakeTarget = Callable[..., OAuthRepository]
RAW = "raw-code-7f3a9d"


@pytest.fixture
def hardened(make_target: MakeTarget) -> OAuthRepository:
    target = make_target("hardened")
    assert isinstance(target, HardenedRepository)
    return target


def store(target: OAuthRepository, code: str, *, verifier: str | None = None,
          method: str | None = "S256", challenge: str | None = None, client: str = CLIENT) -> None:
    if verifier is not None and challenge is None:
        challenge = rfc7636.s256_challenge(verifier)
    target.store_authorization_code(AuthCodeParams(
        code=code, client_id=client, user_id=USER, redirect_uri=REDIRECT, scope="openid",
        code_challenge=challenge, code_challenge_method=method if challenge else None))


def refused(call: Callable[[], Any]) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        call()
    return info.value


def count(db: Database, sql: str, *params: Any) -> int:
    with db.connect() as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    return int(row[0]) if row else -1


def test_plain_and_malformed_challenges_are_refused_at_store_and_nothing_is_written(
    db: Database, hardened: OAuthRepository
) -> None:
    verifier = rfc7636.new_verifier()
    for code, method, challenge in (("c-plain", "plain", verifier), ("c-nomethod", None, verifier),
                                    ("c-short", "S256", "abc"), ("c-pad", "S256", "A" * 42 + "=")):
        params = AuthCodeParams(code=code, client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT,
                                scope="openid", code_challenge=challenge, code_challenge_method=method)
        err = refused(lambda p=params: hardened.store_authorization_code(p))
        assert isinstance(err, ValidationError)
    assert count(db, "SELECT count(*) FROM oauth_auth_codes") == 0


def test_failed_attempts_do_not_burn_the_code(db: Database, hardened: OAuthRepository) -> None:
    verifier = rfc7636.new_verifier()
    store(hardened, "c1", verifier=verifier)
    attempts: list[Callable[[], Any]] = [
        lambda: hardened.exchange_code("c1", CLIENT, REDIRECT, rfc7636.new_verifier()),   # wrong verifier
        lambda: hardened.exchange_code("c1", CLIENT, REDIRECT, None),                     # no verifier
        lambda: hardened.exchange_code("c1", OTHER_CLIENT, REDIRECT, verifier),          # other client
        lambda: hardened.exchange_code("c1", CLIENT, REDIRECT + "/x", verifier),         # other URI
        lambda: hardened.exchange_code("c1", CLIENT, None, verifier),                    # URI omitted
        lambda: hardened.exchange_code("c1", CLIENT, REDIRECT, "short"),                 # bad syntax
    ]
    for attempt in attempts:
        err = refused(attempt)
        assert str(err) == INVALID_CODE
        row = code_row(db, hardened.hash("c1"))
        assert row is not None and row["used_at"] is None
    tokens = hardened.exchange_code("c1", CLIENT, REDIRECT, verifier)
    assert tokens.refresh_token
    row = code_row(db, hardened.hash("c1"))
    assert row is not None and row["used_at"] is not None
    assert row["refresh_token_id"] == hardened.hash(tokens.refresh_token)


def test_downgrade_is_refused(hardened: OAuthRepository) -> None:
    store(hardened, "c1")
    err = refused(lambda: hardened.exchange_code("c1", CLIENT, REDIRECT, rfc7636.new_verifier()))
    assert str(err) == INVALID_CODE
    assert hardened.exchange_code("c1", CLIENT, REDIRECT).refresh_token


def test_replay_tombstones_the_family_and_keeps_the_link(db: Database, hardened: OAuthRepository) -> None:
    store(hardened, RAW)
    first = hardened.exchange_code(RAW, CLIENT, REDIRECT)
    second = hardened.refresh(first.refresh_token, CLIENT)
    assert hardened.introspect_access_token(first.access_token) is not None  # rotation keeps it live
    with capture() as events:
        refused(lambda: hardened.exchange_code(RAW, CLIENT, REDIRECT))
    rows = count(db, "SELECT count(*) FROM oauth_refresh_tokens WHERE family_id = %s "
                     "AND consumed_at IS NOT NULL", REVOKED + first.family_id)
    assert rows == 2
    row = code_row(db, hardened.hash(RAW))
    assert row is not None and row["refresh_token_id"] == hardened.hash(first.refresh_token)
    assert isinstance(refused(lambda: hardened.refresh(second.refresh_token, CLIENT)), TokenInvalidError)
    assert hardened.introspect_access_token(first.access_token) is None
    assert hardened.introspect_access_token(second.access_token) is None
    # No raw code in the log lines; a digest prefix identifies the row.
    lines = [e.render() for e in events]
    assert lines and not any("c1 " in line or line.endswith(RAW) for line in lines)
    assert any(hardened.hash(RAW)[:12] in line for line in lines)
    # A second replay finds the family already revoked: nothing more happens.
    with capture() as again:
        refused(lambda: hardened.exchange_code(RAW, CLIENT, REDIRECT))
    assert any(e.fields.get("revoked_count") == 0 for e in again)


def test_refresh_reuse_revokes_the_whole_family_and_its_access_tokens(hardened: OAuthRepository) -> None:
    store(hardened, "c1")
    first = hardened.exchange_code("c1", CLIENT, REDIRECT)
    second = hardened.refresh(first.refresh_token, CLIENT)
    refused(lambda: hardened.refresh(first.refresh_token, CLIENT))
    refused(lambda: hardened.refresh(second.refresh_token, CLIENT))
    assert hardened.introspect_access_token(second.access_token) is None


def test_another_client_cannot_refresh_or_consume(hardened: OAuthRepository) -> None:
    store(hardened, "c1")
    tokens = hardened.exchange_code("c1", CLIENT, REDIRECT)
    refused(lambda: hardened.refresh(tokens.refresh_token, OTHER_CLIENT))
    assert hardened.refresh(tokens.refresh_token, CLIENT).refresh_token


def test_grace_window_serves_the_retry_and_keeps_one_live_token(make_target: MakeTarget) -> None:
    clock = ManualClock()
    target = make_target("hardened", clock=clock, refresh_reuse_grace_s=30)
    store(target, "c1")
    first = target.exchange_code("c1", CLIENT, REDIRECT)
    second = target.refresh(first.refresh_token, CLIENT)
    clock.advance(1)
    retry = target.refresh(first.refresh_token, CLIENT)
    live = []
    for tok in (second, retry):
        try:
            target.validate_refresh_token(tok.refresh_token, CLIENT)
            live.append(tok)
        except OAuthError:
            pass
    assert live == [retry]
    clock.advance(60)
    refused(lambda: target.refresh(first.refresh_token, CLIENT))
    refused(lambda: target.refresh(retry.refresh_token, CLIENT))


def test_validate_alone_claims_and_a_later_replay_is_refused(hardened: OAuthRepository) -> None:
    store(hardened, "c1")
    assert hardened.validate_authorization_code("c1", CLIENT, REDIRECT).user_id == USER
    refused(lambda: hardened.validate_authorization_code("c1", CLIENT, REDIRECT))


def test_eight_racers_elect_one_winner_per_code(hardened: OAuthRepository) -> None:
    seed_codes(hardened, "hardened-race", 10)
    report = race_threads(hardened, racers=8, codes=10, seed="hardened-race")
    assert report.winners.valid, report.winners.evidence
    assert report.winners.summary["wins"] == 10
    assert report.overlap.summary["keys_raced"] >= 5, report.overlap.summary


def test_faithful_is_unchanged_by_the_subclass(db: Database, faithful: OAuthRepository) -> None:
    """Hardening is a subclass: the faithful port still deletes the family on a replay, as the seed does."""
    store(faithful, "c1")
    first = faithful.exchange_code("c1", CLIENT, REDIRECT)
    refused(lambda: faithful.exchange_code("c1", CLIENT, REDIRECT))
    assert count(db, "SELECT count(*) FROM oauth_refresh_tokens WHERE family_id = %s", first.family_id) == 0
