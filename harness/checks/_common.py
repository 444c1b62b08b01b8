"""Helpers the check modules share: storing codes, reading rows back, shortening digests."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness import rfc7636
from harness.checks import Context
from harness.repository import AuthCodeParams
from harness.scenario import NotApplicable, Outcome
from harness.sut.faithful import OAuthRepository
from harness.sut.tokens import Tokens
from harness.targets.capabilities import Capability

REDIRECT = "https://client.example/cb"
SCOPE = "openid profile"


def short(value: object, n: int = 10) -> str:
    """A digest cut to ``n`` characters plus an ellipsis (enough to tell rows apart, never a secret)."""
    if value is None:
        return "NULL"
    text = str(value)
    return text if len(text) <= n else text[:n] + "…"


def store_code(ctx: Context, target: Any, label: str, client: str, *,
               verifier: str | None = None, challenge: str | None = None,
               method: str | None = "S256", redirect: str = REDIRECT) -> str:
    """Store a fresh code for ``client`` (PKCE S256 of ``verifier`` when one is given); return the raw code.

    Over HTTP the code comes from the server's authorization endpoint instead. Either way it is
    a setup step: if the target refuses it, the check errors.
    """
    if verifier is not None and challenge is None:
        challenge = rfc7636.s256_challenge(verifier)
    if ctx.remote:
        # A server reached over HTTP issues its own codes: ask its authorization endpoint, with
        # the PKCE pair the harness chose (RFC 7636 §4.3).
        minted: str = ctx.sc.setup(
            f"obtain code {label!r} for {client!r} from the authorization endpoint"
            + (f" (PKCE {method})" if challenge is not None else " (no PKCE)"),
            lambda: target.mint_code(client, challenge=challenge,
                                     method=method if challenge is not None else None,
                                     redirect_uri=redirect))
        return minted
    code = ctx.name(f"code-{label}")
    params = AuthCodeParams(code=code, client_id=client, user_id=ctx.user, redirect_uri=redirect,
                            scope=SCOPE, code_challenge=challenge,
                            code_challenge_method=method if challenge is not None else None)
    ctx.sc.setup(f"store code {label!r} for {client.rsplit('-', 2)[-1]!r}"
                 + (f" (PKCE {method})" if challenge is not None else " (no PKCE)"),
                 lambda: target.store_authorization_code(params))
    return code


def exchange(ctx: Context, target: Any, code: str, client: str, verifier: str | None,
             label: str, redirect: str | None = REDIRECT) -> Tokens:
    """A legitimate exchange that must succeed (setup step)."""
    tokens: Tokens = ctx.sc.setup(label, lambda: target.exchange_code(code, client, redirect, verifier))
    return tokens


def pkce_exchange(ctx: Context, target: Any, client: str,
                  label: str) -> tuple[str, str | None, Tokens]:
    """An exchange with PKCE S256 when the target redeems one, else without (a setup step).

    Checks about logs or storage need *some* successful exchange; a target that refuses a correct
    verifier is reported by ``pkce.right-verifier`` and should not make them error.
    """
    verifier = rfc7636.new_verifier()
    code = store_code(ctx, target, label, client, verifier=verifier)
    out = ctx.sc.attempt("exchange with PKCE S256", "ok",
                         lambda: target.exchange_code(code, client, REDIRECT, verifier), judged=False)
    if out.ok:
        tokens: Tokens = out.value
        return code, verifier, tokens
    ctx.sc.note("the target refused a correct PKCE exchange (see pkce.right-verifier)",
                "continuing without PKCE")
    code = store_code(ctx, target, f"{label}-no-pkce", client)
    return code, None, exchange(ctx, target, code, client, None, "exchange without PKCE")


def code_row(ctx: Context, target: OAuthRepository, code: str) -> dict[str, Any] | None:
    """The ``oauth_auth_codes`` row of a raw code (looked up by the target's digest)."""
    with ctx.rows.connect() as conn:
        cur = conn.execute("SELECT code, client_id, used_at, refresh_token_id, expires_at, created_at "
                           "FROM oauth_auth_codes WHERE code = %s", (target.hash(code),))
        row = cur.fetchone()
        names = [c.name for c in cur.description or []]
    return dict(zip(names, row, strict=True)) if row else None


def family_frame(ctx: Context, family_ids: list[str]) -> pd.DataFrame:
    """Every row of the given families (also tombstoned ones), digests shortened; empty without rows."""
    if not ctx.has(Capability.ROWS) or not any(family_ids):
        return pd.DataFrame(columns=["token_id", "family_id", "client", "consumed"])
    with ctx.rows.connect() as conn:
        rows = conn.execute(
            "SELECT token_id, family_id, client_id, consumed_at, expires_at FROM oauth_refresh_tokens "
            "WHERE family_id = ANY(%s) OR family_id = ANY(%s) ORDER BY created_at, token_id",
            (family_ids, [f"revoked:{f}" for f in family_ids]),
        ).fetchall()
    return pd.DataFrame([{"token_id": short(r[0]), "family_id": short(r[1], 18),
                          "client": str(r[2]).rsplit("-", 1)[-1], "consumed": r[3] is not None}
                         for r in rows], columns=["token_id", "family_id", "client", "consumed"])


def live_refresh(target: Any, token: str, client: str) -> bool:
    """Whether ``token`` would still be accepted (read-only: ``validate_refresh_token`` writes nothing)."""
    from harness.scenario import call

    return call(lambda: target.validate_refresh_token(token, client)).ok


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as evidence dicts."""
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def outcome_row(who: str, out: Outcome) -> dict[str, Any]:
    return {"request": who, "outcome": out.describe()}


def method(target: Any, name: str) -> Any:
    """The target's method ``name``, or ``NotApplicable`` naming it.

    ``Capability.REPOSITORY`` already promises every lower method; this is the second line of
    defence for a check that calls one by name: a target object that lacks it (or a future
    capability list that no longer names it) answers ``not_applicable`` before the check writes
    anything, never ``error`` halfway.
    """
    fn = getattr(target, name, None)
    if not callable(fn):
        raise NotApplicable(f"the target has no {name}() method")
    return fn


def follows_clock(target: Any, clock: Any) -> None:
    """``NotApplicable`` unless ``target`` tells the time by ``clock`` (the one the check moves).

    A factory may accept ``clock=`` and keep its own; a check that moved a clock the target does
    not read would judge the wrong instant (and a cleanup would run at the wrong one).
    """
    if not tells_time_by(target, clock):
        raise NotApplicable("the target does not tell the time by the clock it was given")


def tells_time_by(target: Any, clock: Any) -> bool:
    """Whether ``target``'s clock reads what ``clock`` reads (``follows_clock`` without raising)."""
    now = getattr(getattr(target, "clock", None), "now", None)
    return callable(now) and bool(now() == clock.now())


def token_rows(ctx: Context, client_ids: list[str]) -> list[tuple[Any, ...]]:
    """Every ``oauth_refresh_tokens`` row of the given clients (found by client, so no digest is
    needed): (token_id, family_id, consumed_at, expires_at, created_at), in a stable order."""
    with ctx.rows.connect() as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT token_id, family_id, consumed_at, expires_at, created_at FROM oauth_refresh_tokens "
            "WHERE client_id = ANY(%s) ORDER BY created_at, token_id", (client_ids,)).fetchall()]


def scope_set(scope: str | None) -> frozenset[str]:
    """RFC 6749 §3.3: a scope is a space-delimited, unordered set of tokens."""
    return frozenset((scope or "").split())
