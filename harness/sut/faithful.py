"""The faithful port of the seed's ``OAuthRepository`` (authorization codes and refresh tokens).

Method names, SQL and public messages follow
``systemprompt-oauth`` so the Rust and the Python read side by side. Every
behaviour is kept, the gaps included: this is the thing under review. Where
the seed's refresh-token half is not in the seed file, the behaviour follows
DESIGN.md's table.

Step hooks (``self.hooks``) let a scenario stop the grant flow between its
steps (claim → store refresh token → link) to force an interleaving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from harness import rfc7636
from harness.at_rest import hash_at_rest
from harness.clock import Clock, SystemClock
from harness.database import Database
from harness.errors import (
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    REFRESH_TOKEN_EXPIRED,
    ExpiredError,
    TokenInvalidError,
    ValidationError,
)
from harness.logs import OAUTH_LOGGER, warn
from harness.repository import (
    MAX_INPUT_CHARS,
    AuthCodeParams,
    AuthCodeValidationResult,
    RefreshTokenClaim,
    RefreshTokenParams,
    check_input,
    database_errors,
)
from harness.sut.claims import CodeRow, Isolation, Strategy, claim
from harness.sut.hooks import StepHook
from harness.sut.tokens import (
    ACCESS_TOKEN_TTL_S,
    REFRESH_TOKEN_TTL_S,
    Tokens,
    issue_access_token,
    new_refresh_token,
    verify_access_token,
)

log = logging.getLogger(OAUTH_LOGGER)

AUTH_CODE_TTL_S = 600

Hook = Callable[[str], None]


@dataclass
class OAuthRepository:
    """The ``faithful`` target: the seed's repository, gaps included."""

    db: Database
    pepper: str | bytes | None
    clock: Clock = field(default_factory=SystemClock)
    #: Seconds after consumption during which the same client may present a
    #: consumed refresh token again without revoking its family (0 = strict
    #: RFC 9700 §4.14.2 reuse detection).
    refresh_reuse_grace_s: float = 0.0
    claim_strategy: Strategy = Strategy.ATOMIC
    claim_isolation: Isolation = Isolation.READ_COMMITTED
    hooks: list[Hook] = field(default_factory=list)

    name = "faithful"
    #: Seconds a code lives (RFC 6749 §4.1.2: at most 10 minutes RECOMMENDED); a subclass may change it.
    auth_code_ttl_s: ClassVar[float] = AUTH_CODE_TTL_S

    # -- helpers --------------------------------------------------------------

    def hash(self, value: str) -> str:
        """The at-rest digest of ``value`` under this deployment's pepper."""
        return hash_at_rest(value, self.pepper)

    def _step(self, name: str) -> None:
        for hook in self.hooks:
            hook(name)

    def _signing_key(self) -> bytes:
        return bytes.fromhex(self.hash("claimcheck access-token signing key"))

    # -- authorization codes (the seed file) -----------------------------------

    def store_authorization_code(self, params: AuthCodeParams) -> None:
        """Insert the code's digest with ``expires_at = now + 600 s`` (RFC 6749 §4.1.2: short-lived)."""
        check_input(params.code, what="code", message=INVALID_CODE)
        for what in ("client_id", "user_id", "redirect_uri", "scope"):
            check_input(getattr(params, what), what=what, message=INVALID_CODE)
        for what in ("code_challenge", "code_challenge_method", "resource"):
            check_input(getattr(params, what), what=what, message=INVALID_CODE, optional=True)
        now = self.clock.now()
        expires_at = now + timedelta(seconds=self.auth_code_ttl_s)
        code_hash = self.hash(params.code)
        with database_errors(), self.db.write_pool.connection() as conn:
            conn.execute(
                "INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, "
                "expires_at, code_challenge, code_challenge_method, resource, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    code_hash,
                    params.client_id,
                    params.user_id,
                    params.redirect_uri,
                    params.scope,
                    expires_at,
                    params.code_challenge,
                    params.code_challenge_method,
                    params.resource,
                    now,
                ),
            )

    def get_client_id_from_auth_code(self, code: str) -> str | None:
        """The client the code was issued to, or ``None``."""
        check_input(code, what="code", message=INVALID_CODE)
        code_hash = self.hash(code)
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute(
                "SELECT client_id FROM oauth_auth_codes WHERE code = %s", (code_hash,)
            ).fetchone()
        return row[0] if row else None

    def _claim(self, code_hash: str, now: datetime) -> CodeRow | None:
        with database_errors(), self.db.write_pool.connection() as conn:
            return claim(conn, code_hash, now, self.claim_strategy, self.claim_isolation)

    def _check_inputs(
        self, code: str, client_id: str, redirect_uri: str | None, code_verifier: str | None
    ) -> None:
        check_input(code, what="code", message=INVALID_CODE)
        check_input(client_id, what="client_id", message=INVALID_CODE)
        check_input(redirect_uri, what="redirect_uri", message=INVALID_CODE, optional=True)
        check_input(code_verifier, what="code_verifier", message=INVALID_CODE, optional=True)

    def validate_authorization_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> AuthCodeValidationResult:
        """Claim the code atomically, then check expiry, redirect URI and PKCE.

        As in the seed, ``client_id`` is accepted and ignored (``_client_id``),
        the redirect URI is compared only when the caller sends one, a
        verifier is ignored when no challenge was stored, and every check runs
        *after* the claim: a failed attempt spends the code.
        """
        self._check_inputs(code, client_id, redirect_uri, code_verifier)
        now = self.clock.now()
        code_hash = self.hash(code)

        row = self._claim(code_hash, now)
        self._step(StepHook.AFTER_CLAIM)
        if row is None:
            return self._handle_unclaimable_auth_code(code, code_hash)

        if row.expires_at < now:
            warn(log, "Authorization code expired")
            raise ValidationError(INVALID_CODE, detail="expired")

        if redirect_uri is not None and row.redirect_uri != redirect_uri:
            warn(log, "Redirect URI mismatch", expected=redirect_uri, actual=row.redirect_uri)
            raise ValidationError(INVALID_CODE, detail="redirect_uri mismatch")

        if row.code_challenge is not None:
            self._verify_pkce(row, code_verifier)

        return AuthCodeValidationResult(user_id=row.user_id, scope=row.scope, resource=row.resource)

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        """RFC 7636 §4.6, S256 only: ``plain`` is stored but never redeemable, as in the seed."""
        assert row.code_challenge is not None
        if code_verifier is None:
            warn(log, "Missing code_verifier for PKCE challenge")
            raise ValidationError(INVALID_CODE, detail="code_verifier missing")
        if row.code_challenge_method is None:
            warn(log, "Missing code_challenge_method for PKCE challenge")
            raise ValidationError(INVALID_CODE, detail="code_challenge_method missing")
        if row.code_challenge_method != "S256":
            warn(
                log,
                "Unsupported code_challenge_method",
                method=row.code_challenge_method,
                error="unsupported PKCE method",
            )
            raise ValidationError(INVALID_CODE, detail="unsupported code_challenge_method")
        computed = rfc7636.s256_challenge(code_verifier)
        if not rfc7636.constant_time_equal(computed, row.code_challenge):
            warn(log, "PKCE validation failed")
            raise ValidationError(INVALID_CODE, detail="PKCE verifier mismatch")

    def _handle_unclaimable_auth_code(self, code: str, code_hash: str) -> AuthCodeValidationResult:
        """Unknown code → invalid; spent code → replay: revoke the linked family (RFC 6819 §5.2.2.3)."""
        with database_errors():
            with self.db.read_pool.connection() as conn:
                existing = conn.execute(
                    "SELECT used_at, refresh_token_id FROM oauth_auth_codes WHERE code = %s",
                    (code_hash,),
                ).fetchone()
            if existing is None:
                warn(log, "Authorization code not found")
                raise ValidationError(INVALID_CODE, detail="unknown code")
            used_at, rt_id = existing
            if used_at is not None:
                # The seed logs the raw code here (a finding, reproduced on purpose).
                warn(log, "Authorization code replay detected", code=code)
                self._revoke_after_replay(code, rt_id)
                raise ValidationError(INVALID_CODE, detail="replayed code")
        raise ValidationError(INVALID_CODE, detail="unclaimable code")

    def _revoke_after_replay(self, code: str, rt_id: str | None) -> None:
        if rt_id is None:
            warn(
                log,
                "No refresh token linked to replayed auth code",
                event="auth_code_replay_detected",
                code=code,
            )
            return
        with self.db.read_pool.connection() as conn:
            family = conn.execute(
                "SELECT family_id FROM oauth_refresh_tokens WHERE token_id = %s", (rt_id,)
            ).fetchone()
        if family is None:
            warn(
                log,
                "Linked refresh token already gone; no family to revoke",
                event="auth_code_replay_detected",
                code=code,
            )
            return
        with self.db.write_pool.connection() as conn:
            revoked = conn.execute(
                "DELETE FROM oauth_refresh_tokens WHERE family_id = %s", (family[0],)
            ).rowcount
        warn(
            log,
            "Revoked refresh-token family after auth-code replay",
            event="auth_code_replay_detected",
            code=code,
            family_id=family[0],
            revoked_count=revoked,
        )

    def link_auth_code_to_refresh_token(self, code: str, refresh_token_id: str) -> None:
        """Store the refresh token's digest on the code row."""
        check_input(code, what="code", message=INVALID_CODE)
        check_input(refresh_token_id, what="refresh_token_id", message=INVALID_REFRESH_TOKEN)
        code_hash = self.hash(code)
        token_hash = self.hash(refresh_token_id)
        with database_errors(), self.db.write_pool.connection() as conn:
            conn.execute(
                "UPDATE oauth_auth_codes SET refresh_token_id = %s WHERE code = %s",
                (token_hash, code_hash),
            )

    # -- refresh tokens (DESIGN.md's table) -----------------------------------

    def store_refresh_token(self, params: RefreshTokenParams) -> str:
        """Store the token's digest; return the family id (the given one, or the token's own digest)."""
        check_input(params.token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        for what in ("client_id", "user_id", "scope"):
            check_input(getattr(params, what), what=what, message=INVALID_REFRESH_TOKEN)
        check_input(params.family_id, what="family_id", message=INVALID_REFRESH_TOKEN, optional=True)
        check_input(params.resource, what="resource", message=INVALID_REFRESH_TOKEN, optional=True)
        token_hash = self.hash(params.token_id)
        family_id = params.family_id or token_hash
        with database_errors(), self.db.write_pool.connection() as conn:
            conn.execute(
                "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, resource, "
                "expires_at, created_at, family_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token_hash,
                    params.client_id,
                    params.user_id,
                    params.scope,
                    params.resource,
                    params.expires_at,
                    self.clock.now(),
                    family_id,
                ),
            )
        return family_id

    def find_refresh_token_family(self, token_id: str) -> str | None:
        """The family of a (raw) refresh token, or ``None``."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute(
                "SELECT family_id FROM oauth_refresh_tokens WHERE token_id = %s",
                (self.hash(token_id),),
            ).fetchone()
        return row[0] if row else None

    def revoke_refresh_token_family(self, family_id: str) -> int:
        """Delete every token of the family; return how many."""
        check_input(family_id, what="family_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.write_pool.connection() as conn:
            return conn.execute(
                "DELETE FROM oauth_refresh_tokens WHERE family_id = %s", (family_id,)
            ).rowcount

    def validate_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        """Live, unconsumed, unexpired and bound to ``client_id``; nothing is written."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        now = self.clock.now()
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute(
                "SELECT user_id, scope, family_id, resource, expires_at, consumed_at, client_id "
                "FROM oauth_refresh_tokens WHERE token_id = %s",
                (self.hash(token_id),),
            ).fetchone()
        if row is None or row[5] is not None or row[6] != client_id:
            raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown, consumed or foreign")
        if row[4] < now:
            raise ExpiredError(REFRESH_TOKEN_EXPIRED, detail="expired")
        return RefreshTokenClaim(user_id=row[0], scope=row[1], family_id=row[2], resource=row[3])

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        """Claim the token atomically; a consumed token presented again revokes its family."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        now = self.clock.now()
        token_hash = self.hash(token_id)
        with database_errors():
            with self.db.write_pool.connection() as conn:
                row = conn.execute(
                    "UPDATE oauth_refresh_tokens SET consumed_at = %s "
                    "WHERE token_id = %s AND client_id = %s AND consumed_at IS NULL "
                    "AND expires_at >= %s RETURNING user_id, scope, family_id, resource",
                    (now, token_hash, client_id, now),
                    prepare=True,
                ).fetchone()
            if row is not None:
                return RefreshTokenClaim(user_id=row[0], scope=row[1], family_id=row[2], resource=row[3])
            return self._handle_unclaimable_refresh_token(token_hash, client_id, now)

    def _handle_unclaimable_refresh_token(
        self, token_hash: str, client_id: str, now: datetime
    ) -> RefreshTokenClaim:
        with self.db.read_pool.connection() as conn:
            existing = conn.execute(
                "SELECT consumed_at, expires_at, family_id, client_id, user_id, scope, resource "
                "FROM oauth_refresh_tokens WHERE token_id = %s",
                (token_hash,),
            ).fetchone()
        if existing is None:
            warn(log, "Refresh token not found")
            raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown token")
        consumed_at, expires_at, family_id, owner, user_id, scope, resource = existing
        if consumed_at is not None:
            within_grace = (
                self.refresh_reuse_grace_s > 0
                and owner == client_id
                and (now - consumed_at).total_seconds() <= self.refresh_reuse_grace_s
            )
            if within_grace:
                warn(log, "Refresh token reused within grace window", family_id=family_id)
                return RefreshTokenClaim(user_id=user_id, scope=scope, family_id=family_id, resource=resource)
            revoked = self.revoke_refresh_token_family(family_id)
            warn(
                log,
                "Refresh token reuse detected; revoked family",
                event="refresh_token_reuse_detected",
                family_id=family_id,
                revoked_count=revoked,
            )
            raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="reused token")
        if expires_at < now:
            warn(log, "Refresh token expired")
            raise ExpiredError(REFRESH_TOKEN_EXPIRED, detail="expired")
        warn(log, "Refresh token presented by another client")
        raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="client mismatch")

    def revoke_refresh_token(self, token_id: str) -> bool:
        """Delete one token; return whether it existed."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.write_pool.connection() as conn:
            return conn.execute(
                "DELETE FROM oauth_refresh_tokens WHERE token_id = %s", (self.hash(token_id),)
            ).rowcount > 0

    def cleanup_expired_refresh_tokens(self) -> int:
        """Delete every token past ``expires_at``; return how many."""
        with database_errors(), self.db.write_pool.connection() as conn:
            return conn.execute(
                "DELETE FROM oauth_refresh_tokens WHERE expires_at < %s", (self.clock.now(),)
            ).rowcount

    def find_client_id_from_refresh_token(self, token_id: str) -> str | None:
        """The client a (raw) refresh token is bound to, or ``None``."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute(
                "SELECT client_id FROM oauth_refresh_tokens WHERE token_id = %s",
                (self.hash(token_id),),
            ).fetchone()
        return row[0] if row else None

    # -- grant flows (RFC 6749 §4.1.3 and §6) ---------------------------------

    def _tokens(self, claim_: AuthCodeValidationResult | RefreshTokenClaim, client_id: str,
                family_id: str | None) -> Tokens:
        now = self.clock.now()
        refresh_token = new_refresh_token()
        family = self.store_refresh_token(
            RefreshTokenParams(
                token_id=refresh_token,
                client_id=client_id,
                user_id=claim_.user_id,
                scope=claim_.scope,
                expires_at=now + timedelta(seconds=REFRESH_TOKEN_TTL_S),
                family_id=family_id,
                resource=claim_.resource,
            )
        )
        access_token = issue_access_token(
            self._signing_key(),
            user_id=claim_.user_id,
            client_id=client_id,
            scope=claim_.scope,
            family_id=family,
            now=now,
        )
        return Tokens(
            access_token=access_token,
            refresh_token=refresh_token,
            token_type="Bearer",
            expires_in=ACCESS_TOKEN_TTL_S,
            scope=claim_.scope,
            user_id=claim_.user_id,
            family_id=family,
        )

    def exchange_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> Tokens:
        """The token endpoint's ``authorization_code`` grant: validate → new family → link."""
        result = self.validate_authorization_code(code, client_id, redirect_uri, code_verifier)
        self._step(StepHook.AFTER_VALIDATE)
        tokens = self._tokens(result, client_id, family_id=None)
        self._step(StepHook.BEFORE_LINK)
        self.link_auth_code_to_refresh_token(code, tokens.refresh_token)
        self._step(StepHook.AFTER_LINK)
        return tokens

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        """The ``refresh_token`` grant: consume → new token in the same family (rotation)."""
        claim_ = self.consume_refresh_token(refresh_token, client_id)
        self._step(StepHook.AFTER_CONSUME)
        return self._tokens(claim_, client_id, family_id=claim_.family_id)

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        """Claims of a valid access token (signature and expiry only, as a resource server checks a JWT)."""
        if not isinstance(access_token, str) or len(access_token) > MAX_INPUT_CHARS:
            return None
        return verify_access_token(self._signing_key(), access_token, self.clock.now())


def make(db: Database, **kwargs: Any) -> OAuthRepository:
    """The ``faithful`` target's factory (``harness.load_target("faithful", db)``)."""
    return OAuthRepository(db, **kwargs)
