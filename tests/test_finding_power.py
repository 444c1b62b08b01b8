"""Finding power: each check catches a realistic bug planted alone; a reviewer's own class is judged fairly.

Two kinds of target live here, loaded by name (``test_finding_power:make_xxx``) the way a reviewer
loads theirs (``harness.targets.load_target``):

* one-bug variants of the faithful port or of ``hardened``, each a few lines: the check meant for
  the bug must say ``violated`` on the variant and ``holds`` on the base it derives from (``naive``
  carries every bug at once, so on its own it cannot show *which* check catches *which* bug);
* a foreign, duck-typed repository (not a subclass of the port: its own SQL on the same schema, its
  own logger, no step hooks, no ``hash``, no ``validate_refresh_token``), correct, two broken
  versions of it, and the same class keeping its database and clock to itself. Over the whole
  catalogue the correct one gets no ``error`` and no ``violated``: what it lacks is
  ``not_applicable``, what it offers is judged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import harness.checks as checks_package
from harness.at_rest import hash_at_rest
from harness.checks import CATALOGUE, run_check, scan
from harness.clock import Clock, ManualClock, SystemClock
from harness.database import Database
from harness.errors import (
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    InternalError,
    OAuthError,
    TokenInvalidError,
    ValidationError,
)
from harness.logs import warn
from harness.repository import (
    AuthCodeParams,
    AuthCodeValidationResult,
    RefreshTokenClaim,
    RefreshTokenParams,
)
from harness.sut.claims import CodeRow, Strategy
from harness.sut.faithful import OAuthRepository, log
from harness.sut.hardened import Conn, HardenedRepository
from harness.sut.hooks import StepHook
from harness.sut.tokens import ACCESS_TOKEN_TTL_S, REFRESH_TOKEN_TTL_S, Tokens, verify_access_token
from harness.targets.capabilities import REPOSITORY_METHODS, Capability, capabilities_of

V, H, NA = "violated", "holds", "not_applicable"
_MODULE = "test_finding_power"

# -- one-bug variants of the faithful port -------------------------------------------------------


@dataclass
class PaddedS256(OAuthRepository):
    """S256 with standard padding kept ("base64url is base64url"): RFC 7636 §4.2 says no padding."""

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        digest = hashlib.sha256((code_verifier or "").encode()).digest()
        computed = base64.urlsafe_b64encode(digest).decode()  # the bug: the trailing "=" stays
        if code_verifier is None or not hmac.compare_digest(computed, row.code_challenge or ""):
            raise ValidationError(INVALID_CODE, detail="PKCE verifier mismatch")


@dataclass
class VerifierOptional(OAuthRepository):
    """PKCE checked only when the client sends a verifier (RFC 7636 §4.6 requires it once stored)."""

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        if code_verifier is not None:
            super()._verify_pkce(row, code_verifier)


@dataclass
class RenamedEquals(OAuthRepository):
    """The challenge compared with ``!=`` under names no source scan would suspect."""

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        a = row.code_challenge
        b = base64.urlsafe_b64encode(hashlib.sha256((code_verifier or "").encode()).digest()).rstrip(b"=")
        if a != b.decode():  # early exit on the first differing byte (RFC 7636 §4.6, timing)
            raise ValidationError(INVALID_CODE, detail="PKCE verifier mismatch")


@dataclass
class LengthThenCompareDigest(OAuthRepository):
    """Not a bug: a length test before ``compare_digest`` leaks only the (public) length."""

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        stored = row.code_challenge or ""
        computed = base64.urlsafe_b64encode(hashlib.sha256((code_verifier or "").encode()).digest())
        mine = computed.rstrip(b"=").decode()
        if len(mine) != len(stored) or not hmac.compare_digest(mine.encode(), stored.encode()):
            raise ValidationError(INVALID_CODE, detail="PKCE verifier mismatch")


@dataclass
class DecodedEquals(OAuthRepository):
    """``==`` on the decoded digests: the taint cannot follow through ``base64``, so the check must
    say it cannot tell (``inconclusive``), never ``holds``."""

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        stored = base64.urlsafe_b64decode((row.code_challenge or "") + "=")
        if stored != hashlib.sha256((code_verifier or "").encode()).digest():
            raise ValidationError(INVALID_CODE, detail="PKCE verifier mismatch")


class OwnConnection(OAuthRepository):
    """Reads through a database handle of its own, not the one its factory was given."""

    def close(self) -> None:
        self.db.close()


def make_own_connection(db: Database, **kwargs: Any) -> OwnConnection:
    return OwnConnection(Database(db.url), **kwargs)


@dataclass
class HourLongCode(OAuthRepository):
    """A code that lives an hour ("users are slow"): RFC 6749 §4.1.2 recommends at most 10 minutes."""

    auth_code_ttl_s = 3600


@dataclass
class NonAtomicClaim(OAuthRepository):
    """The claim as SELECT, then UPDATE (no ``used_at IS NULL`` on the write): RFC 6749 §4.1.2."""

    claim_strategy: Strategy = Strategy.NAIVE


@dataclass
class ReplayRevokesLinkedOnly(OAuthRepository):
    """A replay revokes the refresh token the code issued, not the family it grew into."""

    def _revoke_after_replay(self, code: str, rt_id: str | None) -> None:
        with self.db.write_pool.connection() as conn:
            conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s", (rt_id,))


@dataclass
class ReuseRevokesOneToken(OAuthRepository):
    """Reuse detection deletes the family's first token (the one whose digest names it) only."""

    def revoke_refresh_token_family(self, family_id: str) -> int:
        with self.db.write_pool.connection() as conn:
            return conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s",
                                (family_id,)).rowcount


@dataclass
class TenYearRefreshToken(OAuthRepository):
    """Refresh tokens stored as good for ten years ("sessions should never end")."""

    def store_refresh_token(self, params: RefreshTokenParams) -> str:
        return super().store_refresh_token(replace(params, expires_at=params.expires_at
                                                   + timedelta(days=3650)))


@dataclass
class RefreshClientFromToken(OAuthRepository):
    """The refresh's client taken from the token row, not the request (RFC 6749 §6: bound to it)."""

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        return super().consume_refresh_token(
            token_id, self.find_client_id_from_refresh_token(token_id) or client_id)


@dataclass
class GraceForAnyClient(OAuthRepository):
    """The grace window asks "how long ago?" and not "by whom?" (RFC 9700 §4.14.2)."""

    def _handle_unclaimable_refresh_token(self, token_hash: str, client_id: str,
                                          now: datetime) -> RefreshTokenClaim:
        with self.db.read_pool.connection() as conn:
            row = conn.execute("SELECT client_id FROM oauth_refresh_tokens WHERE token_id = %s",
                               (token_hash,)).fetchone()
        return super()._handle_unclaimable_refresh_token(token_hash, row[0] if row else client_id, now)


def _validate_ignoring_consumed(self: OAuthRepository, token_id: str, client_id: str) -> RefreshTokenClaim:
    """``validate_refresh_token`` that forgot ``consumed_at``: a rotated-out token "validates"."""
    with self.db.read_pool.connection() as conn:
        row = conn.execute(
            "SELECT user_id, scope, family_id, resource FROM oauth_refresh_tokens WHERE token_id = %s "
            "AND client_id = %s AND expires_at >= %s",
            (self.hash(token_id), client_id, self.clock.now())).fetchone()
    if row is None:
        raise TokenInvalidError(INVALID_REFRESH_TOKEN, detail="unknown or expired")
    return RefreshTokenClaim(user_id=row[0], scope=row[1], family_id=row[2], resource=row[3])


@dataclass
class ValidateAcceptsConsumed(OAuthRepository):
    validate_refresh_token = _validate_ignoring_consumed


@dataclass
class RawFamilyId(OAuthRepository):
    """A new family named by the raw first refresh token instead of its digest (RFC 6819 §5.1.4.1.3)."""

    def store_refresh_token(self, params: RefreshTokenParams) -> str:
        return super().store_refresh_token(replace(params, family_id=params.family_id or params.token_id))


@dataclass
class PepperIgnored(OAuthRepository):
    """The configured pepper ignored for a key compiled in: every deployment shares the digests."""

    def hash(self, value: str) -> str:
        return hash_at_rest(value, "static-key")


@dataclass
class RefreshWidensScope(OAuthRepository):
    """A refresh reissues the client's registered scopes, not the granted ones (RFC 6749 §6)."""

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        return replace(super().consume_refresh_token(token_id, client_id), scope="openid profile email admin")


@dataclass
class RefreshDropsResource(OAuthRepository):
    """The rotation's claim rebuilt without its resource (RFC 8707 §2.2: it stays bound)."""

    def consume_refresh_token(self, token_id: str, client_id: str) -> RefreshTokenClaim:
        return replace(super().consume_refresh_token(token_id, client_id), resource=None)


@dataclass
class AccessTokenNeverExpires(OAuthRepository):
    """Access tokens checked by signature only: ``exp`` is never compared with the clock."""

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        return verify_access_token(self._signing_key(), access_token, datetime(1970, 1, 1, tzinfo=UTC))


@dataclass
class CodeClientByRawCode(OAuthRepository):
    """``get_client_id_from_auth_code`` looks the code up by its raw value (the digest forgotten)."""

    def get_client_id_from_auth_code(self, code: str) -> str | None:
        with self.db.read_pool.connection() as conn:
            row = conn.execute("SELECT client_id FROM oauth_auth_codes WHERE code = %s", (code,)).fetchone()
        return row[0] if row else None


@dataclass
class RevokeTokenByRawValue(OAuthRepository):
    """``revoke_refresh_token`` deletes by the raw token: it revokes nothing and says so."""

    def revoke_refresh_token(self, token_id: str) -> bool:
        with self.db.write_pool.connection() as conn:
            return conn.execute("DELETE FROM oauth_refresh_tokens WHERE token_id = %s",
                                (token_id,)).rowcount > 0


# -- one-bug variants of hardened ----------------------------------------------------------------


@dataclass
class PlainAccepted(HardenedRepository):
    """``plain`` stored "for legacy clients" (RFC 9700 §2.1.1: S256 only)."""

    def store_authorization_code(self, params: AuthCodeParams) -> None:
        if params.code_challenge_method == "plain":
            OAuthRepository.store_authorization_code(self, params)
        else:
            super().store_authorization_code(params)


@dataclass
class DowngradeTolerated(HardenedRepository):
    """A verifier for a code stored without a challenge is dropped, not refused (RFC 9700 §2.1.1)."""

    def _redeem(self, conn: Conn, code_hash: str, client_id: str, redirect_uri: str | None,
                code_verifier: str | None, now: datetime) -> AuthCodeValidationResult | OAuthError:
        row = conn.execute("SELECT code_challenge FROM oauth_auth_codes WHERE code = %s",
                           (code_hash,)).fetchone()
        if row is not None and row[0] is None:
            code_verifier = None
        return super()._redeem(conn, code_hash, client_id, redirect_uri, code_verifier, now)


@dataclass
class RedirectPrefix(HardenedRepository):
    """Anything under the registered redirect URI is accepted (RFC 9700 §2.1: exact matching)."""

    def _redeem(self, conn: Conn, code_hash: str, client_id: str, redirect_uri: str | None,
                code_verifier: str | None, now: datetime) -> AuthCodeValidationResult | OAuthError:
        row = conn.execute("SELECT redirect_uri FROM oauth_auth_codes WHERE code = %s",
                           (code_hash,)).fetchone()
        if row is not None and redirect_uri is not None and redirect_uri.startswith(row[0]):
            redirect_uri = row[0]
        return super()._redeem(conn, code_hash, client_id, redirect_uri, code_verifier, now)


@dataclass
class ClientFromCode(HardenedRepository):
    """The client looked up from the code instead of taken from the request (RFC 6749 §4.1.3)."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        owner = self.get_client_id_from_auth_code(code) or client_id
        return super().exchange_code(code, owner, redirect_uri, code_verifier)


@dataclass
class HelpfulReplayError(HardenedRepository):
    """A replayed code answered "already used" (RFC 6749 §5.2 and RFC 6819 §4.4.1.3: one answer)."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        try:
            return super().exchange_code(code, client_id, redirect_uri, code_verifier)
        except ValidationError as exc:
            if exc.detail == "replayed code":
                raise ValidationError("Authorization code already used", detail=exc.detail) from None
            raise


@dataclass
class IntrospectSignatureOnly(HardenedRepository):
    """The live-family test dropped from introspection "for speed" (RFC 6749 §4.1.2: revoke them)."""

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        return OAuthRepository.introspect_access_token(self, access_token)


@dataclass
class DeletingRevocation(HardenedRepository):
    """Revocation as DELETE again: the incident can no longer be reconstructed (RFC 9700 §4.14.2)."""

    def _tombstone(self, conn: Conn, family_id: str, now: datetime) -> int:
        return conn.execute("DELETE FROM oauth_refresh_tokens WHERE family_id = %s", (family_id,)).rowcount


@dataclass
class PrintsCode(HardenedRepository):
    """A debugging ``print`` left in the token endpoint (RFC 6819 §5.1.4.1.3)."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        print(f"exchange_code({code!r}, {client_id!r})")
        return super().exchange_code(code, client_id, redirect_uri, code_verifier)


@dataclass
class WritesCodeToFd(HardenedRepository):
    """A raw code written straight to file descriptor 2, below ``sys.stderr`` (a C logger would)."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        os.write(2, f"token request code={code}\n".encode())
        return super().exchange_code(code, client_id, redirect_uri, code_verifier)


_audit = logging.getLogger("acme.audit")


@dataclass
class AuditLoggerDebug(HardenedRepository):
    """The raw code in an ``extra=`` field of a DEBUG record of the application's own logger."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        _audit.debug("token request", extra={"code": code, "client": client_id})
        return super().exchange_code(code, client_id, redirect_uri, code_verifier)


@dataclass
class VerifierInLogField(HardenedRepository):
    """A digest where it belongs, and the verifier next to it "for support" (a second secret)."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        tokens = super().exchange_code(code, client_id, redirect_uri, code_verifier)
        warn(log, "Code exchanged", code_digest=self.hash(code)[:12], code_verifier=code_verifier)
        return tokens


@dataclass
class NonAtomicRefresh(HardenedRepository):
    """Refresh as "validate, then mark consumed": two statements nothing ties together (RFC 9700
    §4.14.2), so two presentations of one token both win."""

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        claim = self.validate_refresh_token(refresh_token, client_id)
        self._step(StepHook.BETWEEN_READ_AND_WRITE)
        with self.db.write_pool.connection() as conn:
            conn.execute("UPDATE oauth_refresh_tokens SET consumed_at = %s WHERE token_id = %s",
                         (self.clock.now(), self.hash(refresh_token)))
        return self._tokens(claim, client_id, family_id=claim.family_id)


@dataclass
class HardenedValidateAcceptsConsumed(HardenedRepository):
    validate_refresh_token = _validate_ignoring_consumed


# -- a reviewer's own repository ------------------------------------------------------------------

#: RFC 7636 §4.1 and §4.2.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_acme = logging.getLogger("acme.oauth")


class ForeignRepository:
    """A repository written against the schema alone: plain psycopg, its own logger, no hooks.

    Every decision is taken on the row locked ``FOR UPDATE`` inside one transaction (claim, issue
    and link together), so a failed request writes nothing and a replay sees the link; revocation
    marks the family's rows consumed. It has no ``hash`` (its digest is private), no
    ``validate_refresh_token``, no introspection and no grace option.
    """

    def __init__(self, db: Database, *, pepper: str | bytes | None = None,
                 clock: Clock | None = None, expose: bool = True) -> None:
        self._db, self._clock = db, clock or SystemClock()
        self._key = pepper.encode() if isinstance(pepper, str) else pepper
        if expose:  # what lets the harness read its rows and move its clock (ROWS, CLOCK)
            self.db, self.clock = self._db, self._clock

    def _digest(self, value: str) -> str:
        if not self._key:
            raise InternalError("pepper unavailable")
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def _pkce_ok(self, challenge: str, verifier: str) -> bool:
        if not _VERIFIER.fullmatch(verifier):
            return False
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        return hmac.compare_digest(computed, challenge.encode())

    def store_authorization_code(self, params: AuthCodeParams) -> None:
        pkce = params.code_challenge is not None or params.code_challenge_method is not None
        challenge = params.code_challenge or ""
        well_formed = params.code_challenge_method == "S256" and _CHALLENGE.fullmatch(challenge)
        if pkce and not well_formed:  # RFC 7636 §4.4.1, RFC 9700 §2.1.1: S256 only
            raise ValidationError(INVALID_CODE, detail="S256 only")
        now = self._clock.now()
        with self._db.write_pool.connection() as conn:
            conn.execute(
                "INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, expires_at, "
                "code_challenge, code_challenge_method, resource, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (self._digest(params.code), params.client_id, params.user_id, params.redirect_uri,
                 params.scope, now + timedelta(minutes=10), params.code_challenge,
                 params.code_challenge_method, params.resource, now))

    def _redeem(self, conn: psycopg.Connection[Any], code: str, client_id: str, redirect_uri: str | None,
                verifier: str | None) -> tuple[str, AuthCodeValidationResult | None]:
        """(digest, result); ``None`` = refused. A replay revokes (committed by the caller)."""
        digest, now = self._digest(code), self._clock.now()
        row = conn.execute(
            "SELECT client_id, user_id, scope, redirect_uri, code_challenge, resource, expires_at, "
            "used_at, refresh_token_id FROM oauth_auth_codes WHERE code = %s FOR UPDATE",
            (digest,)).fetchone()
        if row is None:
            return digest, None
        owner, user, scope, stored_uri, challenge, resource, expires_at, used_at, linked = row
        if used_at is not None:
            family = conn.execute("SELECT family_id FROM oauth_refresh_tokens WHERE token_id = %s",
                                  (linked,)).fetchone()
            if family is not None:
                self._revoke(conn, family[0], now)
            _acme.warning("replayed code %s…: family revoked", digest[:8])
            return digest, None
        if owner != client_id or expires_at <= now or redirect_uri != stored_uri:
            return digest, None
        if (challenge is None) != (verifier is None):
            return digest, None
        if challenge is not None and verifier is not None and not self._pkce_ok(challenge, verifier):
            return digest, None
        conn.execute("UPDATE oauth_auth_codes SET used_at = %s WHERE code = %s", (now, digest))
        return digest, AuthCodeValidationResult(user_id=user, scope=scope, resource=resource)

    def validate_authorization_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                                    code_verifier: str | None = None) -> AuthCodeValidationResult:
        with self._db.write_pool.connection() as conn, conn.transaction():
            _, result = self._redeem(conn, code, client_id, redirect_uri, code_verifier)
        if result is None:
            raise ValidationError(INVALID_CODE)
        return result

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        with self._db.write_pool.connection() as conn, conn.transaction():
            digest, result = self._redeem(conn, code, client_id, redirect_uri, code_verifier)
            tokens = None
            if result is not None:
                tokens = self._issue(conn, client_id, result.user_id, result.scope, result.resource,
                                     family=secrets.token_hex(16))
                conn.execute("UPDATE oauth_auth_codes SET refresh_token_id = %s WHERE code = %s",
                             (self._digest(tokens.refresh_token), digest))
        if tokens is None:
            raise ValidationError(INVALID_CODE)
        return tokens

    def _issue(self, conn: psycopg.Connection[Any], client_id: str, user: str, scope: str,
               resource: str | None, family: str) -> Tokens:
        now, refresh_token = self._clock.now(), secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, resource, expires_at, "
            "created_at, family_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (self._digest(refresh_token), client_id, user, scope, resource,
             now + timedelta(seconds=REFRESH_TOKEN_TTL_S), now, family))
        return Tokens(access_token=secrets.token_urlsafe(32), refresh_token=refresh_token,
                      token_type="Bearer", expires_in=ACCESS_TOKEN_TTL_S, scope=scope, user_id=user,
                      family_id=family)

    def _revoke(self, conn: psycopg.Connection[Any], family: str, now: datetime) -> None:
        conn.execute("UPDATE oauth_refresh_tokens SET consumed_at = COALESCE(consumed_at, %s) "
                     "WHERE family_id = %s", (now, family))

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        digest, now = self._digest(refresh_token), self._clock.now()
        tokens = None
        with self._db.write_pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT client_id, user_id, scope, resource, family_id, expires_at, consumed_at "
                "FROM oauth_refresh_tokens WHERE token_id = %s FOR UPDATE", (digest,)).fetchone()
            if row is not None:
                owner, user, scope, resource, family, expires_at, consumed_at = row
                if consumed_at is not None:  # reuse (RFC 9700 §4.14.2): the family goes
                    self._revoke(conn, family, now)
                    _acme.warning("refresh token %s… reused: family revoked", digest[:8])
                elif owner == client_id and expires_at > now:
                    conn.execute("UPDATE oauth_refresh_tokens SET consumed_at = %s WHERE token_id = %s",
                                 (now, digest))
                    tokens = self._issue(conn, client_id, user, scope, resource, family)
        if tokens is None:
            raise TokenInvalidError(INVALID_REFRESH_TOKEN)
        return tokens


class ForeignLeaky(ForeignRepository):
    """Broken: the raw code at INFO through the application's own logger."""

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        _acme.info("token request for code %s by %s", code, client_id)
        return super().exchange_code(code, client_id, redirect_uri, code_verifier)


class ForeignAnyVerifier(ForeignRepository):
    """Broken: any well-formed verifier passes ("the challenge was checked at /authorize")."""

    def _pkce_ok(self, challenge: str, verifier: str) -> bool:
        return bool(_VERIFIER.fullmatch(verifier))


# -- factories (``module:factory``, as a reviewer names theirs) ------------------------------------

#: Every variant by name; ``make_<name>`` below builds it as ``load_target`` calls a factory.
_VARIANTS: dict[str, type[OAuthRepository]] = {
    "padded_s256": PaddedS256, "verifier_optional": VerifierOptional, "renamed_equals": RenamedEquals,
    "length_then_compare_digest": LengthThenCompareDigest, "decoded_equals": DecodedEquals,
    "hour_long_code": HourLongCode, "nonatomic_claim": NonAtomicClaim,
    "replay_revokes_linked_only": ReplayRevokesLinkedOnly,
    "reuse_revokes_one_token": ReuseRevokesOneToken, "ten_year_refresh_token": TenYearRefreshToken,
    "refresh_client_from_token": RefreshClientFromToken, "grace_for_any_client": GraceForAnyClient,
    "validate_accepts_consumed": ValidateAcceptsConsumed, "raw_family_id": RawFamilyId,
    "pepper_ignored": PepperIgnored, "refresh_widens_scope": RefreshWidensScope,
    "refresh_drops_resource": RefreshDropsResource, "access_token_never_expires": AccessTokenNeverExpires,
    "code_client_by_raw_code": CodeClientByRawCode, "revoke_token_by_raw_value": RevokeTokenByRawValue,
    "plain_accepted": PlainAccepted, "downgrade_tolerated": DowngradeTolerated,
    "redirect_prefix": RedirectPrefix, "client_from_code": ClientFromCode,
    "helpful_replay_error": HelpfulReplayError, "introspect_signature_only": IntrospectSignatureOnly,
    "deleting_revocation": DeletingRevocation, "prints_code": PrintsCode,
    "writes_code_to_fd": WritesCodeToFd, "audit_logger_debug": AuditLoggerDebug,
    "verifier_in_log_field": VerifierInLogField, "nonatomic_refresh": NonAtomicRefresh,
    "hardened_validate_accepts_consumed": HardenedValidateAcceptsConsumed,
}


def _factory(cls: type[OAuthRepository]) -> Callable[..., OAuthRepository]:
    def make(db: Database, **kwargs: Any) -> OAuthRepository:
        return cls(db, **kwargs)
    return make


# ``load_target`` resolves ``module:factory`` with getattr, so module globals are all it needs.
for _name, _cls in _VARIANTS.items():
    globals()[f"make_{_name}"] = _factory(_cls)


def make_foreign(db: Database, **kwargs: Any) -> ForeignRepository:
    return ForeignRepository(db, **kwargs)


def make_foreign_bare(db: Database, **kwargs: Any) -> ForeignRepository:
    """The same class keeping its database and clock to itself: no rows, no clock for the harness."""
    return ForeignRepository(db, expose=False, **kwargs)


def make_foreign_leaky(db: Database, **kwargs: Any) -> ForeignRepository:
    return ForeignLeaky(db, **kwargs)


def make_foreign_any_verifier(db: Database, **kwargs: Any) -> ForeignRepository:
    return ForeignAnyVerifier(db, **kwargs)


# -- each bug, caught by the check meant for it ----------------------------------------------------

#: (variant, the check meant for its bug, the base it derives from).
BUGS: list[tuple[str, str, str]] = [
    ("plain_accepted", "pkce.plain", "hardened"),
    ("padded_s256", "pkce.right-verifier", "faithful"),
    ("padded_s256", "pkce.appendix-b", "faithful"),
    ("verifier_optional", "pkce.missing-verifier", "faithful"),
    ("downgrade_tolerated", "pkce.downgrade", "hardened"),
    ("renamed_equals", "pkce.constant-time", "faithful"),
    ("redirect_prefix", "code.redirect-mismatch", "hardened"),
    ("hour_long_code", "code.expiry", "faithful"),
    ("client_from_code", "code.client-binding", "hardened"),
    ("helpful_replay_error", "code.indistinguishable", "hardened"),
    ("replay_revokes_linked_only", "replay.revokes-family", "faithful"),
    ("introspect_signature_only", "replay.access-tokens", "hardened"),
    ("deleting_revocation", "replay.audit-trail", "hardened"),
    ("prints_code", "replay.log-secrets", "hardened"),
    ("writes_code_to_fd", "replay.log-secrets", "hardened"),
    ("audit_logger_debug", "replay.log-secrets", "hardened"),
    ("verifier_in_log_field", "replay.log-secrets", "hardened"),
    ("reuse_revokes_one_token", "refresh.rotation", "faithful"),
    ("nonatomic_refresh", "refresh.concurrent", "hardened"),
    ("ten_year_refresh_token", "refresh.expiry", "faithful"),
    ("refresh_client_from_token", "refresh.client-binding", "faithful"),
    ("hardened_validate_accepts_consumed", "refresh.grace-policy", "hardened"),
    ("grace_for_any_client", "refresh.grace-cross-client", "faithful"),
    ("access_token_never_expires", "token.access-expiry", "faithful"),
    ("refresh_drops_resource", "token.resource", "faithful"),
    ("refresh_widens_scope", "token.scope", "faithful"),
    ("raw_family_id", "at-rest.no-raw-secrets", "faithful"),
    ("pepper_ignored", "at-rest.pepper", "faithful"),
    ("validate_accepts_consumed", "repository.validate-refresh", "faithful"),
    ("code_client_by_raw_code", "repository.code-client", "faithful"),
    ("revoke_token_by_raw_value", "repository.revoke-token", "faithful"),
    ("nonatomic_claim", "race.single-winner", "faithful"),
]


def test_the_bug_list_names_real_checks_and_factories() -> None:
    for variant, check_id, base in BUGS:
        assert check_id in CATALOGUE, check_id
        assert callable(globals().get(f"make_{variant}")), variant
        assert base in ("faithful", "hardened")
    assert len({v for v, _, _ in BUGS}) >= 12


@pytest.mark.parametrize(("variant", "check_id", "base"), BUGS, ids=[f"{v}-{c}" for v, c, _ in BUGS])
def test_the_check_meant_for_a_bug_catches_it(db: Database, pepper: str, variant: str, check_id: str,
                                              base: str) -> None:
    assert run_check(check_id, db, base, pepper).verdict == H, f"{check_id} must hold on {base}"
    result = run_check(check_id, db, f"{_MODULE}:make_{variant}", pepper)
    assert result.verdict == V, result.frame().to_string()


def test_constant_time_follows_the_value_not_the_name(db: Database, pepper: str) -> None:
    """A renamed ``!=`` is caught where it runs; a ``len()`` test before ``compare_digest`` is not
    a comparison of the value and holds."""
    renamed = run_check("pkce.constant-time", db, f"{_MODULE}:make_renamed_equals", pepper)
    flagged = [e for e in renamed.evidence if e.get("flagged")]
    assert flagged and all(e["comparison"] == "!=" for e in flagged)
    assert all(str(e["where"]).startswith("test_finding_power.py:") for e in flagged)
    checked = run_check("pkce.constant-time", db, f"{_MODULE}:make_length_then_compare_digest", pepper)
    assert checked.verdict == H, checked.frame().to_string()
    assert not any(e.get("flagged") for e in checked.evidence)
    assert any(e.get("primitive") == "compare_digest" for e in checked.evidence)
    # Where the value cannot be followed the check says so; it never guesses "holds".
    decoded = run_check("pkce.constant-time", db, f"{_MODULE}:make_decoded_equals", pepper)
    assert decoded.verdict == "inconclusive", decoded.frame().to_string()
    own = run_check("pkce.constant-time", db, f"{_MODULE}:make_own_connection", pepper)
    assert own.verdict == NA and "database handed to its factory" in str(own.evidence[0]["reason"])


def test_log_secrets_names_where_each_line_went(db: Database, pepper: str) -> None:
    wheres = {}
    for variant in ("prints_code", "writes_code_to_fd", "audit_logger_debug", "verifier_in_log_field"):
        result = run_check("replay.log-secrets", db, f"{_MODULE}:make_{variant}", pepper)
        wheres[variant] = {(str(e["where"]), str(e["secrets"])) for e in result.evidence if "where" in e}
    assert ("stdout", "raw code") in wheres["prints_code"]
    assert ("stderr", "raw code") in wheres["writes_code_to_fd"]
    assert ("log acme.audit DEBUG", "raw code") in wheres["audit_logger_debug"]
    assert ("log harness.oauth WARNING", "verifier") in wheres["verifier_in_log_field"]


def test_capturing_leaves_logging_as_it_was(db: Database, pepper: str) -> None:
    root, oauth = logging.getLogger(), logging.getLogger("harness.oauth")
    before = (root.level, list(root.handlers), oauth.level, oauth.propagate, _audit.level)
    run_check("replay.log-secrets", db, f"{_MODULE}:make_audit_logger_debug", pepper)
    assert (root.level, list(root.handlers), oauth.level, oauth.propagate, _audit.level) == before


# -- a reviewer's own class -----------------------------------------------------------------------


def test_capabilities_are_read_off_what_the_checks_use(db: Database, pepper: str) -> None:
    clock = ManualClock()
    foreign = ForeignRepository(db, pepper=pepper, clock=clock)
    assert capabilities_of(foreign, db=db, clock=clock) == {
        Capability.IN_PROCESS, Capability.STORE, Capability.ROWS, Capability.CLOCK}
    # A clock of its own does not move when a check moves the one it handed over; rows written
    # elsewhere cannot be read by the harness.
    own_clock = ForeignRepository(db, pepper=pepper)
    assert Capability.CLOCK not in capabilities_of(own_clock, db=db, clock=clock)
    with Database(db.url) as other:
        elsewhere = ForeignRepository(other, pepper=pepper, clock=clock)
        assert Capability.ROWS not in capabilities_of(elsewhere, db=db, clock=clock)
    faithful = OAuthRepository(db, pepper=pepper, clock=clock)
    assert capabilities_of(faithful, db=db, clock=clock) == set(Capability)


def test_repository_capability_names_exactly_the_lower_methods_the_checks_call() -> None:
    """A method no check calls must not cost a target the capability; one a check calls must be in it."""
    grants = {"store_authorization_code", "validate_authorization_code", "exchange_code", "refresh",
              "hash", "introspect_access_token"}
    lower = {m for m, v in vars(OAuthRepository).items()
             if callable(v) and not m.startswith("_") and m not in grants}
    source = "\n".join(f.read_text() for f in Path(checks_package.__file__).parent.glob("*.py"))
    assert {m for m in lower if re.search(rf"\b{m}\b", source)} == set(REPOSITORY_METHODS)


def test_a_correct_foreign_target_gets_no_error_and_no_false_finding(db: Database, pepper: str) -> None:
    results = {r.id: r for r in scan(db, f"{_MODULE}:make_foreign", pepper=pepper)}
    assert list(results) == list(CATALOGUE)
    wrong = {i: (r.verdict, r.evidence[:2]) for i, r in results.items() if r.verdict in ("error", V)}
    assert not wrong
    for check_id, result in results.items():
        lacking = set(CATALOGUE[check_id].requires) - {"in_process", "store", "rows", "clock"}
        if lacking:
            assert result.verdict == NA, check_id
            assert any(need in str(result.evidence[0]["reason"]) for need in lacking), check_id
    judged = [i for i, r in results.items() if r.verdict == H]
    for check_id in ("pkce.wrong-verifier", "pkce.constant-time", "code.single-use", "code.expiry",
                     "replay.revokes-family", "replay.log-secrets", "refresh.rotation",
                     "refresh.grace-policy", "race.single-winner"):
        assert check_id in judged, (check_id, results[check_id].verdict, results[check_id].evidence[:2])


def test_a_foreign_target_that_keeps_its_database_to_itself_gets_no_error(db: Database, pepper: str) -> None:
    results = scan(db, f"{_MODULE}:make_foreign_bare", pepper=pepper)
    assert {r.id: r.verdict for r in results if r.verdict in ("error", V)} == {}
    reasons = {r.id: str(r.evidence[0].get("reason", "")) for r in results if r.verdict == NA}
    assert "needs clock" in reasons["code.expiry"] and "rows" in reasons["at-rest.digest"]


@pytest.mark.parametrize(("factory", "check_id"), [("foreign_leaky", "replay.log-secrets"),
                                                   ("foreign_any_verifier", "pkce.wrong-verifier")])
def test_a_broken_foreign_target_is_caught(db: Database, pepper: str, factory: str, check_id: str) -> None:
    assert run_check(check_id, db, f"{_MODULE}:make_foreign", pepper).verdict == H
    result = run_check(check_id, db, f"{_MODULE}:make_{factory}", pepper)
    assert result.verdict == V, result.frame().to_string()
