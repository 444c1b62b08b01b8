"""At rest: every secret column holds HMAC-SHA-256(pepper, value) and no raw secret reaches the database."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import REDIRECT, StoreCode, code_row, dump_all, row_counts

from harness import rfc7636
from harness.at_rest import PEPPER_UNAVAILABLE, hash_at_rest
from harness.database import Database
from harness.errors import InternalError, ValidationError
from harness.repository import AuthCodeParams, OAuthRepository, RefreshTokenParams
from harness.testing.plugin import CLIENT, USER


def stdlib_digest(pepper: str, value: str) -> str:
    """The digest recomputed independently of the harness (stdlib ``hmac``, not ``cryptography``)."""
    return hmac.new(pepper.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_hash_at_rest_matches_the_stdlib(pepper: str) -> None:
    for value in ("c1", "ü-😀", "x" * 4096):
        assert hash_at_rest(value, pepper) == stdlib_digest(pepper, value)
    assert hash_at_rest("c1", pepper.encode()) == stdlib_digest(pepper, "c1")
    assert hash_at_rest("c1", pepper) != hash_at_rest("c1", pepper + "2")


def test_every_digest_column_and_no_raw_secret_anywhere(
    db: Database, faithful: OAuthRepository, pepper: str, store_code: StoreCode
) -> None:
    verifier = rfc7636.new_verifier()
    store_code("raw-code-Q7", code_challenge=rfc7636.s256_challenge(verifier),
               code_challenge_method="S256")
    first = faithful.exchange_code("raw-code-Q7", CLIENT, REDIRECT, verifier)
    second = faithful.refresh(first.refresh_token, CLIENT)

    # 1. each digest column, recomputed with the stdlib
    row = code_row(db, stdlib_digest(pepper, "raw-code-Q7"))
    assert row is not None
    assert row["refresh_token_id"] == stdlib_digest(pepper, first.refresh_token)
    with db.connect() as conn:
        tokens = conn.execute(
            "SELECT token_id, family_id FROM oauth_refresh_tokens ORDER BY created_at, consumed_at"
        ).fetchall()
    family = stdlib_digest(pepper, first.refresh_token)
    assert sorted(tokens) == sorted([(family, family),
                                     (stdlib_digest(pepper, second.refresh_token), family)])

    # 2. no raw value in any column of any table
    dump = dump_all(db)
    secrets = {"code": "raw-code-Q7", "verifier": verifier, "pepper": pepper,
               "refresh 1": first.refresh_token, "refresh 2": second.refresh_token,
               "access 1": first.access_token, "access 2": second.access_token}
    assert stdlib_digest(pepper, "raw-code-Q7") in dump  # the dump does hold the rows searched
    leaked = [name for name, value in secrets.items() if value in dump]
    assert leaked == []


def test_a_pepper_change_makes_old_codes_unknown(
    db: Database, faithful: OAuthRepository, make_target: Callable[..., OAuthRepository],
    store_code: StoreCode
) -> None:
    store_code("c1")
    rotated = make_target("faithful", pepper="another-pepper")
    assert rotated.get_client_id_from_auth_code("c1") is None
    with pytest.raises(ValidationError):
        rotated.validate_authorization_code("c1", CLIENT, REDIRECT)
    # the failed lookup under the new pepper did not spend the code
    assert faithful.validate_authorization_code("c1", CLIENT, REDIRECT).user_id == USER


def missing_pepper_calls(target: OAuthRepository) -> dict[str, Callable[[], object]]:
    return {
        "store_authorization_code": lambda: target.store_authorization_code(AuthCodeParams(
            code="new", client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope="openid")),
        "get_client_id_from_auth_code": lambda: target.get_client_id_from_auth_code("c1"),
        "validate_authorization_code": lambda: target.validate_authorization_code("c1", CLIENT),
        "exchange_code": lambda: target.exchange_code("c1", CLIENT, REDIRECT),
        "link_auth_code_to_refresh_token": lambda: target.link_auth_code_to_refresh_token("c1", "rt"),
        "store_refresh_token": lambda: target.store_refresh_token(RefreshTokenParams(
            token_id="rt-new", client_id=CLIENT, user_id=USER, scope="openid",
            expires_at=target.clock.now() + timedelta(hours=1))),
        "find_refresh_token_family": lambda: target.find_refresh_token_family("rt-1"),
        "validate_refresh_token": lambda: target.validate_refresh_token("rt-1", CLIENT),
        "consume_refresh_token": lambda: target.consume_refresh_token("rt-1", CLIENT),
        "refresh": lambda: target.refresh("rt-1", CLIENT),
        "revoke_refresh_token": lambda: target.revoke_refresh_token("rt-1"),
        "find_client_id_from_refresh_token": lambda: target.find_client_id_from_refresh_token("rt-1"),
    }


@pytest.mark.parametrize("pepper_value", [None, ""], ids=["unset", "empty"])
def test_missing_pepper_is_an_internal_error_and_writes_nothing(
    pepper_value: str | None, db: Database, faithful: OAuthRepository,
    make_target: Callable[..., OAuthRepository], store_code: StoreCode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HARNESS_AT_REST_PEPPER", raising=False)
    store_code("c1")
    faithful.store_refresh_token(RefreshTokenParams(
        token_id="rt-1", client_id=CLIENT, user_id=USER, scope="openid",
        expires_at=faithful.clock.now().replace(year=2999)))
    before = dump_all(db)
    counts = row_counts(db)
    unpeppered = make_target("faithful", pepper=pepper_value)
    for name, call in missing_pepper_calls(unpeppered).items():
        with pytest.raises(InternalError) as info:
            call()
        assert str(info.value) == PEPPER_UNAVAILABLE, name
    assert row_counts(db) == counts
    assert dump_all(db) == before
    # the peppered deployment is untouched: its code and token still work
    assert faithful.exchange_code("c1", CLIENT, REDIRECT).user_id == USER
    assert faithful.refresh("rt-1", CLIENT).user_id == USER
