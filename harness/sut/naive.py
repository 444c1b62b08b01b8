"""The ``naive`` target: the negative control, a repository with the bugs real ones have had.

Its first job is the race: the claim reads the row with ``used_at IS NULL``,
then marks it used with an UPDATE that does not re-check ``used_at``. At READ
COMMITTED two callers can both read the unused row and both "win". A race
check that does not catch this target proves nothing.

Its second job is to show that every other check can fail: a check that
passes on every shipped target proves nothing either. So each of the bugs
below is one a real implementation has shipped, and each is caught by the
check named after it (``harness scan --target naive``):

* non-atomic code claim (SELECT, then UPDATE) → ``code.single-use``, ``race.single-winner``;
* S256 computed with standard, padded base64 instead of BASE64URL without padding
  (RFC 7636 §4.2) → ``pkce.appendix-b``, ``pkce.right-verifier``;
* the "fix" for the failures that causes: fall back to ``plain`` (verifier == challenge),
  compared with ``==`` → ``pkce.wrong-verifier``, ``pkce.plain``, ``pkce.constant-time``;
* PKCE checked only when a verifier is sent → ``pkce.missing-verifier``;
* redirect URI lower-cased ("URLs are case-insensitive") and compared as a prefix (RFC 9700 §2.1
  wants exact string matching) → ``code.redirect-mismatch`` (another path, query, letter case,
  trailing slash, fragment);
* a one-hour code lifetime (RFC 6749 §4.1.2 recommends at most 10 minutes) → ``code.expiry``;
* "helpful" errors that say whether a code is unknown, used or expired → ``code.indistinguishable``;
* revocation removes the one token involved, not its family → ``replay.revokes-family``,
  ``replay.cross-client``, ``refresh.rotation``;
* a non-atomic refresh-token claim whose SELECT forgets the expiry and the client
  → ``refresh.concurrent``, ``refresh.expiry``, ``refresh.client-binding``;
* a new family named after the raw first refresh token → ``at-rest.no-raw-secrets``, ``at-rest.digest``;
* a built-in default pepper when none is configured → ``at-rest.pepper``;
* a grace window for refresh-token reuse that compares the time but not the client
  (RFC 9700 §4.14.2) → ``refresh.grace-cross-client``;
* access tokens verified by signature only, their ``exp`` never checked (``jwt.decode(…,
  options={"verify_exp": False})``) → ``token.access-expiry``;
* the rotation's claim built without ``resource=`` (the dataclass field defaults to ``None``), so
  every token after the first is good at any resource (RFC 8707 §2.2) → ``token.resource``;
* a refresh reissues the client's registered scopes, not the token's (RFC 6749 §6)
  → ``token.scope``;

and in the repository methods no grant calls (``harness.checks.repository_methods``):

* ``cleanup_expired_refresh_tokens`` deletes by age with the access-token lifetime (created more
  than an hour ago), so live refresh tokens go too → ``repository.cleanup-expired``;
* ``revoke_refresh_token`` looks the token up by its raw value (the at-rest digest was added to
  the grant paths only), so it revokes nothing and says False → ``repository.revoke-token``;
* ``get_client_id_from_auth_code`` answers ``""`` for an unknown code (Rust's
  ``unwrap_or_default()`` ported literally) → ``repository.code-client``;
* ``find_refresh_token_family`` returns the token's own digest, true only of a family's first
  token in the seed's naming (and never here) → ``repository.token-family``;
* ``find_client_id_from_refresh_token`` asks the code that issued the token, which links only the
  first token of a family → ``repository.token-client``;
* ``validate_refresh_token`` forgets ``consumed_at``: a rotated-out token "validates"
  → ``repository.validate-refresh``.

It keeps every gap of the faithful port as well (client id ignored, raw code
in the replay log line, …).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from harness.at_rest import hash_at_rest
from harness.database import Database
from harness.errors import (
    INVALID_REFRESH_TOKEN,
    REFRESH_TOKEN_EXPIRED,
    ExpiredError,
    TokenInvalidError,
    ValidationError,
)
from harness.logs import warn
from harness.repository import (
    MAX_INPUT_CHARS,
    AuthCodeValidationResult,
    RefreshTokenClaim,
    RefreshTokenParams,
    check_input,
    database_errors,
)
from harness.sut.claims import MARK_USED, SELECT_UNUSED, CodeRow, Isolation, Strategy
from harness.sut.faithful import OAuthRepository, log
from harness.sut.hooks import StepHook
from harness.sut.tokens import ACCESS_TOKEN_TTL_S, Tokens, verify_access_token

#: The development pepper left in the code "for convenience".
DEFAULT_PEPPER = "changeme"

#: What the refresh grant reissues: every scope the client is registered for.
REGISTERED_SCOPE = "openid profile email offline_access"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_HELPFUL = {
    "unknown code": "Authorization code not found",
    "replayed code": "Authorization code already used",
    "unclaimable code": "Authorization code already used",
    "expired": "Authorization code expired",
}


@dataclass
class NaiveRepository(OAuthRepository):
    claim_strategy: Strategy = Strategy.NAIVE
    claim_isolation: Isolation = Isolation.READ_COMMITTED

    name = "naive"
    auth_code_ttl_s: ClassVar[float] = 3600

    def hash(self, value: str) -> str:
        return hash_at_rest(value, self.pepper or DEFAULT_PEPPER)

    def _claim(self, code_hash: str, now: datetime) -> CodeRow | None:
        if not self.hooks or self.claim_isolation is not Isolation.READ_COMMITTED:
            return super()._claim(code_hash, now)
        # The same SELECT-then-UPDATE as harness.sut.claims' naive strategy, with a step hook in the
        # gap so a scenario can put a second request exactly there.
        with database_errors(), self.db.write_pool.connection() as conn:
            raw = conn.execute(SELECT_UNUSED, (code_hash,)).fetchone()
            if raw is None:
                return None
            self._step(StepHook.BETWEEN_READ_AND_WRITE)
            conn.execute(MARK_USED, (now, code_hash))
            return CodeRow(*raw)

    def validate_authorization_code(
        self,
        code: str,
        client_id: str,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> AuthCodeValidationResult:
        self._check_inputs(code, client_id, redirect_uri, code_verifier)
        now = self.clock.now()
        code_hash = self.hash(code)
        row = self._claim(code_hash, now)
        self._step(StepHook.AFTER_CLAIM)
        try:
            if row is None:
                return self._handle_unclaimable_auth_code(code, code_hash)
            if row.expires_at < now:
                raise ValidationError("Invalid authorization code", detail="expired")
            # The bug: "URLs are case-insensitive", and anything under the registered URI is fine.
            if redirect_uri is not None and not redirect_uri.lower().startswith(row.redirect_uri.lower()):
                raise ValidationError("Invalid authorization code", detail="redirect_uri mismatch")
            if row.code_challenge is not None:
                self._verify_pkce(row, code_verifier)
        except ValidationError as exc:
            raise ValidationError(_HELPFUL.get(exc.detail, exc.message), detail=exc.detail) from None
        return AuthCodeValidationResult(user_id=row.user_id, scope=row.scope, resource=row.resource)

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        if code_verifier is None:
            return
        digest = hashlib.sha256(code_verifier.encode()).digest()
        computed = base64.b64encode(digest).decode()
        if computed == row.code_challenge or code_verifier == row.code_challenge:
            return
        warn(log, "PKCE validation failed")
        raise ValidationError("Invalid authorization code", detail="PKCE verifier mismatch")

    def _revoke_after_replay(self, code: str, rt_id: str | None) -> None:
        warn(log, "Authorization code replay detected; revoking its refresh token",
             event="auth_code_replay_detected", code=code)
        if rt_id is not None:
            with self.db.write_pool.connection() as conn:
                conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s", (rt_id,))

    def store_refresh_token(self, params: RefreshTokenParams) -> str:
        if params.family_id is None:
            params = replace(params, family_id=params.token_id)
        return super().store_refresh_token(params)

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        now = self.clock.now()
        token_hash = self.hash(token_id)
        with database_errors():
            with self.db.write_pool.connection() as conn:
                raw: Any = conn.execute(
                    "SELECT user_id, scope, family_id, resource FROM oauth_refresh_tokens "
                    "WHERE token_id = %s AND consumed_at IS NULL", (token_hash,)).fetchone()
                if raw is not None:
                    self._step(StepHook.BETWEEN_READ_AND_WRITE)
                    conn.execute("UPDATE oauth_refresh_tokens SET consumed_at = %s WHERE token_id = %s",
                                 (now, token_hash))
                    # The bug: ``resource=`` left out; the field's default (None) hides it.
                    return RefreshTokenClaim(user_id=raw[0], scope=raw[1], family_id=raw[2])
            with self.db.read_pool.connection() as conn:
                existing = conn.execute(
                    "SELECT consumed_at, user_id, scope, family_id FROM oauth_refresh_tokens "
                    "WHERE token_id = %s", (token_hash,)).fetchone()
            if existing is None:
                raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown token")
            consumed_at, user_id, scope, family_id = existing
            # The bug: the grace window asks "how long ago?", never "by whom?".
            if (consumed_at is not None and self.refresh_reuse_grace_s > 0
                    and (now - consumed_at).total_seconds() <= self.refresh_reuse_grace_s):
                warn(log, "Refresh token reused within grace window")
                return RefreshTokenClaim(user_id=user_id, scope=scope, family_id=family_id)
            with self.db.write_pool.connection() as conn:
                conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s", (token_hash,))
            warn(log, "Refresh token reuse detected; revoked the token")
            raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="reused token")

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        claim_ = self.consume_refresh_token(refresh_token, client_id)
        self._step(StepHook.AFTER_CONSUME)
        # The bug: the new tokens get the client's registered scopes, not the ones the user granted.
        return self._tokens(replace(claim_, scope=REGISTERED_SCOPE), client_id, family_id=claim_.family_id)

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        if not isinstance(access_token, str) or len(access_token) > MAX_INPUT_CHARS:
            return None
        # The bug: signature only. Checked "at" the epoch, no ``exp`` is ever in the past.
        return verify_access_token(self._signing_key(), access_token, _EPOCH)

    # -- the methods no grant calls -------------------------------------------------------------

    def get_client_id_from_auth_code(self, code: str) -> str | None:
        # The bug: ``unwrap_or_default()`` ported literally; a caller's ``is None`` never fires.
        return super().get_client_id_from_auth_code(code) or ""

    def validate_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        check_input(client_id, what="client_id", message=INVALID_REFRESH_TOKEN)
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute(
                "SELECT user_id, scope, family_id, resource, expires_at, client_id "
                "FROM oauth_refresh_tokens WHERE token_id = %s", (self.hash(token_id),)).fetchone()
        # The bug: no ``consumed_at`` test, so a rotated-out token is "valid".
        if row is None or row[5] != client_id:
            raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown or foreign")
        if row[4] < self.clock.now():
            raise ExpiredError(REFRESH_TOKEN_EXPIRED, detail="expired")
        return RefreshTokenClaim(user_id=row[0], scope=row[1], family_id=row[2], resource=row[3])

    def find_refresh_token_family(self, token_id: str) -> str | None:
        # The bug: "a family is named after its token", true of first tokens only (in the seed).
        return self.hash(token_id) if super().find_refresh_token_family(token_id) is not None else None

    def find_client_id_from_refresh_token(self, token_id: str) -> str | None:
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        # The bug: the client of the code the token came from; only a family's first token is linked.
        with database_errors(), self.db.read_pool.connection() as conn:
            row = conn.execute("SELECT client_id FROM oauth_auth_codes WHERE refresh_token_id = %s",
                               (self.hash(token_id),)).fetchone()
        return row[0] if row else None

    def revoke_refresh_token(self, token_id: str) -> bool:
        check_input(token_id, what="token_id", message=INVALID_REFRESH_TOKEN)
        # The bug: the raw token, not its digest; matches nothing, revokes nothing.
        with database_errors(), self.db.write_pool.connection() as conn:
            return conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s",
                                (token_id,)).rowcount > 0

    def cleanup_expired_refresh_tokens(self) -> int:
        # The bug: age instead of expiry, with the access token's lifetime: a live refresh token
        # older than an hour is deleted. (Time-based, like the right predicate: the cleanup check's
        # clock in 2001 keeps it away from any row the harness did not write.)
        cutoff = self.clock.now() - timedelta(seconds=ACCESS_TOKEN_TTL_S)
        with database_errors(), self.db.write_pool.connection() as conn:
            return conn.execute("DELETE FROM oauth_refresh_tokens WHERE created_at < %s",
                                (cutoff,)).rowcount


def make(db: Database, **kwargs: Any) -> NaiveRepository:
    return NaiveRepository(db, **kwargs)
