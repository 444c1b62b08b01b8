"""Property-based tests: digests, PKCE, input checks, and a stateful model of codes and refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from harness import rfc7636
from harness.at_rest import hash_at_rest
from harness.clock import ManualClock
from harness.database import Database
from harness.errors import (
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    ExpiredError,
    TokenInvalidError,
    ValidationError,
)
from harness.repository import MAX_INPUT_CHARS, AuthCodeParams, check_input
from harness.sut.faithful import AUTH_CODE_TTL_S, OAuthRepository
from harness.sut.tokens import REFRESH_TOKEN_TTL_S
from harness.targets import load_target
from harness.testing.plugin import CLIENT, OTHER_CLIENT, TEST_PEPPER, USER

REDIRECT = "https://client.example/cb"


@given(value=st.text(max_size=200), pepper=st.text(min_size=1, max_size=40))
def test_hash_at_rest_is_hmac_sha256(value: str, pepper: str) -> None:
    expected = hmac.new(pepper.encode(), value.encode(), hashlib.sha256).hexdigest()
    assert hash_at_rest(value, pepper) == expected


@given(verifier=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~",
                        min_size=43, max_size=128))
def test_s256_challenge(verifier: str) -> None:
    challenge = rfc7636.s256_challenge(verifier)
    assert rfc7636.verifier_is_well_formed(verifier)
    assert len(challenge) == 43 and "=" not in challenge
    assert base64.urlsafe_b64decode(challenge + "=") == hashlib.sha256(verifier.encode()).digest()


@given(value=st.text(max_size=MAX_INPUT_CHARS + 10) | st.just("a" * (MAX_INPUT_CHARS + 1)))
def test_check_input_accepts_exactly_the_storable_text(value: str) -> None:
    storable = 0 < len(value) <= MAX_INPUT_CHARS and "\x00" not in value
    try:
        check_input(value, what="code", message=INVALID_CODE)
        accepted = True
    except ValidationError as exc:
        assert str(exc) == INVALID_CODE
        assert value == "" or value not in exc.detail
        accepted = False
    assert accepted is storable


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s))
def test_any_text_code_redeems_once(code: str, database: Database) -> None:
    database.reset()
    database.ensure_party(CLIENT, USER)
    target = load_target("faithful", database, pepper=TEST_PEPPER)
    target.store_authorization_code(AuthCodeParams(code=code, client_id=CLIENT, user_id=USER,
                                                   redirect_uri=REDIRECT, scope="openid"))
    assert target.validate_authorization_code(code, CLIENT, REDIRECT).user_id == USER
    with pytest.raises(ValidationError):
        target.validate_authorization_code(code, CLIENT, REDIRECT)


# -- the stateful model -------------------------------------------------------------------


def note(message: str) -> None:
    """``hypothesis.event`` inside a generated run; nothing when a test drives the machine by hand."""
    if currently_in_test_context():
        event(message)


@dataclass
class CodeModel:
    expires_at: datetime
    verifier: str | None
    used: bool = False
    link: str | None = None  # the raw refresh token the exchange linked


@dataclass
class TokenModel:
    client: str
    family: str
    expires_at: datetime
    consumed_at: datetime | None = None


class Lifecycle(RuleBasedStateMachine):
    """Codes and refresh tokens as the DESIGN describes them, compared with the database after every step.

    Strict reuse detection (RFC 9700 §4.14.2): the model has no grace window.
    """

    database: ClassVar[Database]
    make_target: ClassVar[Callable[[Database, ManualClock], OAuthRepository]]

    codes = Bundle("codes")
    tokens = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        with self.database.write_pool.connection() as conn:  # cheaper than reset() per example
            conn.execute("DELETE FROM oauth_auth_codes")
            conn.execute("DELETE FROM oauth_refresh_tokens")
        self.database.ensure_party(CLIENT, USER)
        self.database.ensure_party(OTHER_CLIENT, USER)
        self.clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
        self.target = type(self).make_target(self.database, self.clock)
        self.model_codes: dict[str, CodeModel] = {}
        self.model_tokens: dict[str, TokenModel] = {}
        self.issued = 0
        self.spent: list[str] = []  # codes presented once
        self.rotated: list[str] = []  # refresh tokens consumed once

    # -- helpers ---------------------------------------------------------------------

    def _digest(self, raw: str) -> str:
        return self.target.hash(raw)

    def _revoke_family(self, family: str) -> None:
        for raw in [r for r, t in self.model_tokens.items() if t.family == family]:
            del self.model_tokens[raw]

    def _issue(self, raw: str, client: str, family: str) -> None:
        self.model_tokens[raw] = TokenModel(
            client, family, self.clock.now() + timedelta(seconds=REFRESH_TOKEN_TTL_S))

    # -- rules -----------------------------------------------------------------------

    @initialize(target=tokens)
    def first_grant(self) -> Any:
        """Every run starts with one live token, so rotation and reuse are reached early."""
        code = self._store_code(False)
        self.spent.append(code)
        return self._exchange(code, True, CLIENT)

    @rule(target=codes, pkce=st.booleans())
    def store_code(self, pkce: bool) -> str:
        return self._store_code(pkce)

    def _store_code(self, pkce: bool) -> str:
        self.issued += 1
        code = f"code-{self.issued}"
        verifier = rfc7636.new_verifier() if pkce else None
        self.target.store_authorization_code(AuthCodeParams(
            code=code, client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope="openid",
            code_challenge=rfc7636.s256_challenge(verifier) if verifier else None,
            code_challenge_method="S256" if verifier else None))
        self.model_codes[code] = CodeModel(self.clock.now() + timedelta(seconds=AUTH_CODE_TTL_S),
                                           verifier)
        return code

    @rule(target=tokens, code=consumes(codes), right_verifier=st.booleans(),
          client=st.sampled_from([CLIENT, CLIENT, OTHER_CLIENT]))
    def exchange(self, code: str, right_verifier: bool, client: str) -> Any:
        self.spent.append(code)
        return self._exchange(code, right_verifier, client)

    @precondition(lambda self: bool(self.spent))
    @rule(target=tokens, pick=st.integers(min_value=0), client=st.sampled_from([CLIENT, OTHER_CLIENT]))
    def replay(self, pick: int, client: str) -> Any:
        return self._exchange(self.spent[pick % len(self.spent)], True, client)

    def _exchange(self, code: str, right_verifier: bool, client: str) -> Any:
        m = self.model_codes[code]
        verifier = m.verifier if right_verifier or m.verifier is None else rfc7636.new_verifier()
        # the model's expectation
        if m.used:
            if m.link is not None and m.link in self.model_tokens:  # ON DELETE SET NULL otherwise
                self._revoke_family(self.model_tokens[m.link].family)
            expect_ok = False
        else:
            m.used = True
            expect_ok = self.clock.now() <= m.expires_at and (m.verifier is None or right_verifier)
        note(f"exchange expects {'ok' if expect_ok else 'refusal'}"
              + (" (replay)" if m.link is not None and not expect_ok else ""))
        try:
            tokens = self.target.exchange_code(code, client, REDIRECT, verifier)
        except ValidationError as exc:
            assert not expect_ok, f"exchange refused: {exc.detail}"
            assert str(exc) == INVALID_CODE
            return multiple()
        assert expect_ok, "exchange succeeded where the model refuses"
        assert tokens.family_id == self._digest(tokens.refresh_token)
        self._issue(tokens.refresh_token, client, tokens.family_id)
        m.link = tokens.refresh_token
        return multiple(tokens.refresh_token)

    @rule(target=tokens, token=tokens, client=st.sampled_from([CLIENT, CLIENT, OTHER_CLIENT]))
    def refresh(self, token: str, client: str) -> Any:
        return self._refresh(token, client)

    @precondition(lambda self: bool(self.rotated))
    @rule(target=tokens, pick=st.integers(min_value=0),
          client=st.sampled_from([CLIENT, CLIENT, OTHER_CLIENT]))
    def reuse(self, pick: int, client: str) -> Any:
        return self._refresh(self.rotated[pick % len(self.rotated)], client)

    def _refresh(self, token: str, client: str) -> Any:
        now = self.clock.now()
        t = self.model_tokens.get(token)
        expected: type[Exception] | None
        if t is None:
            expected = TokenInvalidError
        elif t.consumed_at is None and t.client == client and t.expires_at >= now:
            expected = None
            t.consumed_at = now
        elif t.consumed_at is not None:
            expected = TokenInvalidError
            self._revoke_family(t.family)
        elif t.expires_at < now:
            expected = ExpiredError
        else:
            expected = TokenInvalidError  # bound to another client
        note(f"refresh expects {expected.__name__ if expected else 'ok'}"
              + (" (reuse)" if t is not None and t.consumed_at is not None and expected else ""))
        try:
            rotated = self.target.refresh(token, client)
        except (TokenInvalidError, ExpiredError) as exc:
            assert expected is type(exc), f"refresh raised {exc.detail}, model expects {expected}"
            if expected is TokenInvalidError:
                assert str(exc) == INVALID_REFRESH_TOKEN
            return multiple()
        assert expected is None, f"refresh succeeded where the model expects {expected}"
        assert t is not None and rotated.family_id == t.family
        self.rotated.append(token)
        self._issue(rotated.refresh_token, client, t.family)
        return multiple(rotated.refresh_token)

    @rule(seconds=st.sampled_from([1, 1, AUTH_CODE_TTL_S - 1, AUTH_CODE_TTL_S + 1, REFRESH_TOKEN_TTL_S]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def cleanup(self) -> None:
        expired = [r for r, t in self.model_tokens.items() if t.expires_at < self.clock.now()]
        for raw in expired:
            del self.model_tokens[raw]
        assert self.target.cleanup_expired_refresh_tokens() == len(expired)

    @rule(token=tokens)
    def revoke(self, token: str) -> None:
        existed = self.model_tokens.pop(token, None) is not None
        assert self.target.revoke_refresh_token(token) is existed

    # -- the database agrees with the model after every step ----------------------------

    @invariant()
    def database_matches_model(self) -> None:
        with self.database.read_pool.connection() as conn:
            tokens = set(conn.execute(
                "SELECT token_id, family_id, client_id, consumed_at FROM oauth_refresh_tokens"))
            codes = set(conn.execute(
                "SELECT code, used_at IS NOT NULL, refresh_token_id FROM oauth_auth_codes"))
        assert tokens == {(self._digest(r), t.family, t.client, t.consumed_at)
                          for r, t in self.model_tokens.items()}
        assert codes == {
            (self._digest(c), m.used,
             self._digest(m.link) if m.link is not None and m.link in self.model_tokens else None)
            for c, m in self.model_codes.items()}


MODEL_SETTINGS = settings(max_examples=50, stateful_step_count=30, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))


def test_stateful_lifecycle_matches_the_model(database: Database) -> None:
    Lifecycle.database = database
    Lifecycle.make_target = staticmethod(
        lambda db, clock: load_target("faithful", db, pepper=TEST_PEPPER, clock=clock))
    run_state_machine_as_test(Lifecycle, settings=MODEL_SETTINGS)


def test_the_model_catches_a_divergent_target(database: Database) -> None:
    # A grace window lets a consumed token be refreshed again: the strict model must notice,
    # or it could not notice anything. The steps are driven by hand, so the divergence is
    # reached every time rather than when generation happens to find it.
    Lifecycle.database = database
    Lifecycle.make_target = staticmethod(
        lambda db, clock: load_target("faithful", db, pepper=TEST_PEPPER, clock=clock,
                                      refresh_reuse_grace_s=10**9))
    machine = Lifecycle()
    (first,) = machine.first_grant().values          # a live token: ok
    machine.database_matches_model()
    machine.refresh(first, CLIENT)                   # rotation: ok
    machine.database_matches_model()
    with pytest.raises(AssertionError, match="refresh succeeded where the model expects"):
        machine.reuse(0, CLIENT)                     # strict model: reuse refused; grace target: ok
