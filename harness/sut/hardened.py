"""The ``hardened`` target: the seed's design with every finding of ``harness scan --target faithful`` closed.

Same schema (no column added), same digests, same public messages. What
changed, per finding, and why:

* ``code.client-binding`` – the code is redeemed only by the client it was issued to
  (RFC 6749 §4.1.3); the seed accepted and ignored ``_client_id``.
* ``code.failed-redemption`` – every check (client, expiry, redirect URI, PKCE) runs on the row
  locked with ``SELECT … FOR UPDATE`` *before* ``used_at`` is set, in one transaction: a failed
  attempt writes nothing, so an intercepted code that PKCE makes useless to the thief no longer
  denies the user service (RFC 7636 §1). The seed claimed first and checked after.
* ``code.redirect-omitted`` – ``redirect_uri`` is required and compared exactly whenever one was
  stored (RFC 6749 §4.1.3); the seed compared it only when the caller chose to send one.
* ``pkce.downgrade`` – a ``code_verifier`` for a code stored without a challenge is refused
  (RFC 9700 §2.1.1); the seed ignored it.
* ``pkce.plain`` – ``plain`` (or a challenge without a method, which RFC 7636 §4.3 reads as
  ``plain``) is refused when the code is stored (RFC 7636 §4.4.1, RFC 9700 §2.1.1), and an S256
  challenge must be 43 base64url characters (§4.2); the seed stored it and then refused every
  redemption, burning the code.
* ``pkce.verifier-syntax`` – a verifier outside 43–128 unreserved characters is refused (RFC 7636 §4.1).
* ``replay.between-claim-and-link`` – claim, refresh-token issue and link happen in the one
  transaction that holds the code's row lock, so a replay arriving in between waits for the link
  and then revokes the family; in the seed it found no link, revoked nothing, and the first
  exchange's tokens lived on (RFC 6749 §4.1.2).
* ``replay.access-tokens`` – ``introspect_access_token`` also requires the token's family to be
  live (some unconsumed, unexpired refresh token), so revoking a family revokes the access tokens
  issued from it (RFC 6749 §4.1.2 "all tokens previously issued"); the seed's were valid until exp.
* ``replay.log-secrets`` – log events carry a 12-hex prefix of the digest, never the raw code
  (RFC 6819 §5.1.4.1.3); the seed logged the raw code on every replay.
* ``replay.audit-trail`` – revocation is a tombstone, not a DELETE: every row of the family is
  kept, marked consumed, and its ``family_id`` is prefixed ``revoked:`` (so the code's link and
  the rotation history survive for the incident review, RFC 9700 §4.14.2, and a revoked family
  can never be confused with a live one); the seed deleted the rows and, through ``ON DELETE SET
  NULL``, the code's link with them.
* ``refresh.concurrent`` – consume and issue happen in one transaction on the locked token row:
  a concurrent presentation of the same token waits, sees it consumed, and its reuse detection
  revokes the winner's new token too (RFC 9700 §4.14.2); in the seed the winner inserted its new
  token after the revocation had run and it survived.
* ``refresh.grace-policy`` – a retry inside the grace window consumes the tokens issued from the
  first use before issuing its own, so the family keeps exactly one live token; the seed left
  two live branches (RFC 9700 §4.14.2: reuse must stay detectable).

Inherited unchanged, because the seed already gets them right (the checks hold on both):
exact redirect-URI comparison (``code.redirect-mismatch``, RFC 9700 §2.1); the grace window's
client comparison, so another client's reuse is revoked (``refresh.grace-cross-client``); the
access token's ``exp`` (``token.access-expiry``); the scope and resource a rotation copies
(``token.scope``, ``token.resource``, RFC 6749 §6, RFC 8707 §2.2); and the lower methods no grant
calls (``repository.*``: cleanup by ``expires_at``, one-token revocation, lookups by digest,
read-only validation).

Claim strategy and isolation options are accepted but ignored: the row lock in a transaction is
the design. Hooks fire inside the transaction, so a request forced in between blocks on the row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from harness import rfc7636
from harness.database import Database
from harness.errors import (
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    REFRESH_TOKEN_EXPIRED,
    ExpiredError,
    OAuthError,
    TokenInvalidError,
    ValidationError,
)
from harness.logs import warn
from harness.repository import (
    AuthCodeParams,
    AuthCodeValidationResult,
    RefreshTokenClaim,
    check_input,
    database_errors,
)
from harness.sut.faithful import OAuthRepository, log
from harness.sut.hooks import StepHook
from harness.sut.tokens import (
    ACCESS_TOKEN_TTL_S,
    REFRESH_TOKEN_TTL_S,
    Tokens,
    issue_access_token,
    new_refresh_token,
)

#: Prefix of a revoked family's ``family_id`` (the tombstone).
REVOKED = "revoked:"
#: RFC 7636 §4.2: BASE64URL(SHA-256) without padding is 43 characters.
S256_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")

Conn = psycopg.Connection[Any]


def _tag(digest: str) -> str:
    """What a log line may carry to identify a row: a prefix of its digest."""
    return digest[:12]


@dataclass
class HardenedRepository(OAuthRepository):
    """The faithful port with its findings closed (see the module docstring)."""

    name = "hardened"

    # -- authorization codes ----------------------------------------------------

    def store_authorization_code(self, params: AuthCodeParams) -> None:
        """Refuse ``plain``, a challenge without S256 or a malformed one; then store as the seed does."""
        if params.code_challenge is not None or params.code_challenge_method is not None:
            if params.code_challenge_method != "S256":
                raise ValidationError(INVALID_CODE, detail="code_challenge_method must be S256")
            if params.code_challenge is None or not S256_CHALLENGE_RE.fullmatch(params.code_challenge):
                raise ValidationError(INVALID_CODE, detail="malformed S256 code_challenge")
        super().store_authorization_code(params)

    def validate_authorization_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> AuthCodeValidationResult:
        """Check everything on the locked row, then claim; a failed attempt writes nothing."""
        self._check_inputs(code, client_id, redirect_uri, code_verifier)
        now, code_hash = self.clock.now(), self.hash(code)
        with database_errors(), self.db.write_pool.connection() as conn, conn.transaction():
            result = self._redeem(conn, code_hash, client_id, redirect_uri, code_verifier, now)
        if isinstance(result, OAuthError):
            raise result
        return result

    def exchange_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> Tokens:
        """Claim, issue and link in one transaction (RFC 6749 §4.1.3), so a replay sees the link."""
        self._check_inputs(code, client_id, redirect_uri, code_verifier)
        now, code_hash = self.clock.now(), self.hash(code)
        tokens: Tokens | None = None
        with database_errors(), self.db.write_pool.connection() as conn, conn.transaction():
            result = self._redeem(conn, code_hash, client_id, redirect_uri, code_verifier, now)
            if not isinstance(result, OAuthError):
                self._step(StepHook.AFTER_VALIDATE)
                tokens = self._issue(conn, result, client_id, None, now)
                self._step(StepHook.BEFORE_LINK)
                conn.execute("UPDATE oauth_auth_codes SET refresh_token_id = %s WHERE code = %s",
                             (self.hash(tokens.refresh_token), code_hash))
                self._step(StepHook.AFTER_LINK)
        if isinstance(result, OAuthError):
            raise result
        assert tokens is not None
        return tokens

    def _redeem(self, conn: Conn, code_hash: str, client_id: str, redirect_uri: str | None,
                code_verifier: str | None, now: datetime) -> AuthCodeValidationResult | OAuthError:
        """Inside the caller's transaction: lock the row, judge it, claim it. Errors are returned so
        the transaction still commits what a replay must write (the family's tombstone)."""
        row = conn.execute(
            "SELECT user_id, scope, expires_at, redirect_uri, code_challenge, code_challenge_method, "
            "resource, client_id, used_at, refresh_token_id FROM oauth_auth_codes WHERE code = %s "
            "FOR UPDATE", (code_hash,)).fetchone()
        tag = _tag(code_hash)

        def refuse(reason: str) -> ValidationError:
            warn(log, "Authorization code refused", reason=reason, code_digest=tag)
            return ValidationError(INVALID_CODE, detail=reason)

        if row is None:
            return refuse("unknown code")
        (user_id, scope, expires_at, stored_uri, challenge, method, resource, owner, used_at,
         rt_id) = row
        if used_at is not None:
            revoked = self._revoke_linked_family(conn, rt_id, now)
            warn(log, "Authorization code replay detected", event="auth_code_replay_detected",
                 code_digest=tag, revoked_count=revoked)
            return ValidationError(INVALID_CODE, detail="replayed code")
        if owner != client_id:
            return refuse("client mismatch")
        if expires_at < now:
            return refuse("expired")
        if redirect_uri != stored_uri:
            return refuse("redirect_uri missing" if redirect_uri is None else "redirect_uri mismatch")
        if challenge is None:
            if code_verifier is not None:
                return refuse("code_verifier without code_challenge (PKCE downgrade)")
        else:
            if code_verifier is None:
                return refuse("code_verifier missing")
            if method != "S256":
                return refuse("unsupported code_challenge_method")
            if not rfc7636.verifier_is_well_formed(code_verifier):
                return refuse("malformed code_verifier")
            if not rfc7636.constant_time_equal(rfc7636.s256_challenge(code_verifier), challenge):
                return refuse("PKCE verifier mismatch")
        conn.execute("UPDATE oauth_auth_codes SET used_at = %s WHERE code = %s", (now, code_hash))
        self._step(StepHook.AFTER_CLAIM)
        return AuthCodeValidationResult(user_id=user_id, scope=scope, resource=resource)

    def _revoke_linked_family(self, conn: Conn, rt_id: str | None, now: datetime) -> int:
        if rt_id is None:
            return 0
        family = conn.execute("SELECT family_id FROM oauth_refresh_tokens WHERE token_id = %s",
                              (rt_id,)).fetchone()
        return self._tombstone(conn, family[0], now) if family else 0

    # -- refresh tokens ---------------------------------------------------------

    def _tombstone(self, conn: Conn, family_id: str, now: datetime) -> int:
        """Revoke a family by marking its rows, never deleting them (audit, RFC 9700 §4.14.2)."""
        if family_id.startswith(REVOKED):
            return 0
        return conn.execute(
            "UPDATE oauth_refresh_tokens SET family_id = %s, consumed_at = COALESCE(consumed_at, %s) "
            "WHERE family_id = %s", (REVOKED + family_id, now, family_id)).rowcount

    def revoke_refresh_token_family(self, family_id: str) -> int:
        """Tombstone every token of the family; return how many."""
        check_input(family_id, what="family_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.write_pool.connection() as conn:
            return self._tombstone(conn, family_id, self.clock.now())

    def _consume(self, conn: Conn, token_hash: str, client_id: str,
                 now: datetime) -> RefreshTokenClaim | OAuthError:
        row = conn.execute(
            "SELECT user_id, scope, family_id, resource, expires_at, consumed_at, client_id "
            "FROM oauth_refresh_tokens WHERE token_id = %s FOR UPDATE", (token_hash,)).fetchone()
        if row is None:
            return TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown token")
        user_id, scope, family_id, resource, expires_at, consumed_at, owner = row
        claim = RefreshTokenClaim(user_id=user_id, scope=scope, family_id=family_id, resource=resource)
        tag = _tag(token_hash)
        if family_id.startswith(REVOKED):
            warn(log, "Refresh token of a revoked family presented", token_digest=tag)
            return TokenInvalidError(INVALID_REFRESH_TOKEN, detail="revoked family")
        if consumed_at is not None:
            in_grace = (self.refresh_reuse_grace_s > 0 and owner == client_id
                        and (now - consumed_at).total_seconds() <= self.refresh_reuse_grace_s)
            if in_grace:
                # Serve the retry, but retire what the first use issued: one live token per family.
                retired = conn.execute(
                    "UPDATE oauth_refresh_tokens SET consumed_at = %s WHERE family_id = %s "
                    "AND consumed_at IS NULL", (now, family_id)).rowcount
                warn(log, "Refresh token reused within grace window", token_digest=tag, retired=retired)
                return claim
            revoked = self._tombstone(conn, family_id, now)
            warn(log, "Refresh token reuse detected; revoked family", event="refresh_token_reuse_detected",
                 token_digest=tag, revoked_count=revoked)
            return TokenInvalidError(INVALID_REFRESH_TOKEN, detail="reused token")
        if owner != client_id:
            warn(log, "Refresh token presented by another client", token_digest=tag)
            return TokenInvalidError(INVALID_REFRESH_TOKEN, detail="client mismatch")
        if expires_at < now:
            return ExpiredError(REFRESH_TOKEN_EXPIRED, detail="expired")
        conn.execute("UPDATE oauth_refresh_tokens SET consumed_at = %s WHERE token_id = %s",
                     (now, token_hash))
        return claim

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        """Consume on the locked row; a consumed token presented again tombstones its family."""
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        now = self.clock.now()
        with database_errors(), self.db.write_pool.connection() as conn, conn.transaction():
            result = self._consume(conn, self.hash(token_id), client_id, now)
        if isinstance(result, OAuthError):
            raise result
        return result

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        """Consume and issue in one transaction, so a concurrent reuse also revokes the new token."""
        check_input(refresh_token, what="refresh_token", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        now = self.clock.now()
        tokens: Tokens | None = None
        with database_errors(), self.db.write_pool.connection() as conn, conn.transaction():
            result = self._consume(conn, self.hash(refresh_token), client_id, now)
            if not isinstance(result, OAuthError):
                self._step(StepHook.AFTER_CONSUME)
                tokens = self._issue(conn, result, client_id, result.family_id, now)
        if isinstance(result, OAuthError):
            raise result
        assert tokens is not None
        return tokens

    def _issue(self, conn: Conn, claim: AuthCodeValidationResult | RefreshTokenClaim, client_id: str,
               family_id: str | None, now: datetime) -> Tokens:
        """The faithful ``_tokens``, on the caller's connection (inside its transaction)."""
        refresh_token = new_refresh_token()
        token_hash = self.hash(refresh_token)
        family = family_id or token_hash
        conn.execute(
            "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, resource, "
            "expires_at, created_at, family_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (token_hash, client_id, claim.user_id, claim.scope, claim.resource,
             now + timedelta(seconds=REFRESH_TOKEN_TTL_S), now, family))
        access_token = issue_access_token(self._signing_key(), user_id=claim.user_id, client_id=client_id,
                                          scope=claim.scope, family_id=family, now=now)
        return Tokens(access_token=access_token, refresh_token=refresh_token, token_type="Bearer",
                      expires_in=ACCESS_TOKEN_TTL_S, scope=claim.scope, user_id=claim.user_id,
                      family_id=family)

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        """Signature and expiry, and a live family (RFC 6749 §4.1.2: revocation reaches access tokens)."""
        claims = super().introspect_access_token(access_token)
        if claims is None:
            return None
        with database_errors(), self.db.read_pool.connection() as conn:
            live = conn.execute(
                "SELECT 1 FROM oauth_refresh_tokens WHERE family_id = %s AND consumed_at IS NULL "
                "AND expires_at >= %s LIMIT 1", (str(claims.get("fam", "")), self.clock.now())).fetchone()
        return claims if live else None


def make(db: Database, **kwargs: Any) -> HardenedRepository:
    return HardenedRepository(db, **kwargs)
