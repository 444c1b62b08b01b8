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


# -- issue 10: what hardened inherits from the seed and must keep --------------------------------------


def test_a_grace_window_serves_only_the_same_client_another_one_revokes_the_family(
        make_target: MakeTarget, clock: ManualClock) -> None:
    target = make_target("hardened", refresh_reuse_grace_s=30)
    store(target, "c1")
    first = target.exchange_code("c1", CLIENT, REDIRECT)
    second = target.refresh(first.refresh_token, CLIENT)
    clock.advance(1)
    assert isinstance(refused(lambda: target.refresh(first.refresh_token, OTHER_CLIENT)), TokenInvalidError)
    # The token leaked: its whole family is tombstoned, so neither the owner's retry nor its
    # newest token is served any more.
    refused(lambda: target.refresh(second.refresh_token, CLIENT))
    refused(lambda: target.refresh(first.refresh_token, CLIENT))
    assert target.introspect_access_token(second.access_token) is None


def test_rotation_keeps_the_resource_and_the_scope(hardened: OAuthRepository) -> None:
    hardened.store_authorization_code(AuthCodeParams(
        code="c1", client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope="openid",
        resource="https://api.example/"))
    tokens = hardened.exchange_code("c1", CLIENT, REDIRECT)
    for _ in range(3):
        claim = hardened.validate_refresh_token(tokens.refresh_token, CLIENT)
        assert (claim.resource, claim.scope, tokens.scope) == ("https://api.example/", "openid", "openid")
        tokens = hardened.refresh(tokens.refresh_token, CLIENT)


def test_an_access_token_stops_working_after_expires_in(hardened: OAuthRepository,
                                                        clock: ManualClock) -> None:
    store(hardened, "c1")
    tokens = hardened.exchange_code("c1", CLIENT, REDIRECT)
    clock.advance(tokens.expires_in - 1)
    assert hardened.introspect_access_token(tokens.access_token) is not None
    clock.advance(2)
    assert hardened.introspect_access_token(tokens.access_token) is None


def test_redirect_uri_is_compared_as_an_exact_string(hardened: OAuthRepository) -> None:
    for i, uri in enumerate(("https://CLIENT.example/cb", "https://client.example/CB", REDIRECT + "/",
                             "https://client.example/%63b", "https://client.example:443/cb",
                             "https://u@client.example/cb", REDIRECT + "#f", "http://client.example/cb")):
        store(hardened, f"c{i}")
        refused(lambda c=f"c{i}", u=uri: hardened.exchange_code(c, CLIENT, u))
        assert hardened.exchange_code(f"c{i}", CLIENT, REDIRECT).refresh_token  # not burnt


def test_the_lower_methods_answer_for_rotated_tokens_and_touch_only_their_own_row(
        db: Database, hardened: OAuthRepository, clock: ManualClock) -> None:
    store(hardened, "c1")
    first = hardened.exchange_code("c1", CLIENT, REDIRECT)
    newest = hardened.refresh(first.refresh_token, CLIENT)
    store(hardened, "c2", client=OTHER_CLIENT)
    bystander = hardened.exchange_code("c2", OTHER_CLIENT, REDIRECT)
    assert hardened.get_client_id_from_auth_code("c2") == OTHER_CLIENT
    assert hardened.get_client_id_from_auth_code("never-issued") is None
    assert hardened.find_refresh_token_family(newest.refresh_token) == first.family_id
    assert hardened.find_refresh_token_family("never-issued") is None
    assert hardened.find_client_id_from_refresh_token(newest.refresh_token) == CLIENT
    assert hardened.find_client_id_from_refresh_token("never-issued") is None
    # validate_refresh_token: the consumed token and another client are refused, nothing written.
    before = count(db, "SELECT count(*) FROM oauth_refresh_tokens WHERE consumed_at IS NOT NULL")
    refused(lambda: hardened.validate_refresh_token(first.refresh_token, CLIENT))
    refused(lambda: hardened.validate_refresh_token(newest.refresh_token, OTHER_CLIENT))
    assert count(db, "SELECT count(*) FROM oauth_refresh_tokens WHERE consumed_at IS NOT NULL") == before
    # revoke_refresh_token: that one token, True; then unknown; the other family untouched.
    assert hardened.revoke_refresh_token(newest.refresh_token) is True
    assert hardened.revoke_refresh_token(newest.refresh_token) is False
    refused(lambda: hardened.refresh(newest.refresh_token, CLIENT))
    claim = hardened.validate_refresh_token(bystander.refresh_token, OTHER_CLIENT)
    assert claim.family_id == bystander.family_id
    # cleanup_expired_refresh_tokens: a month on, the expired tokens go and a fresh one stays.
    clock.advance(29 * 24 * 3600)
    store(hardened, "c3")
    fresh = hardened.exchange_code("c3", CLIENT, REDIRECT)
    clock.advance(24 * 3600 + 60)
    assert hardened.cleanup_expired_refresh_tokens() == 2  # the first token and the bystander's
    assert hardened.validate_refresh_token(fresh.refresh_token, CLIENT).scope == "openid"
    assert count(db, "SELECT count(*) FROM oauth_refresh_tokens") == 1
