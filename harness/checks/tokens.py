"""What the issued tokens carry (RFC 6749 §5.1, §6; RFC 8707 §2.2): lifetime, resource and scope."""

from __future__ import annotations

from functools import partial
from typing import Any

from harness.checks import Context, check
from harness.checks._common import (
    REDIRECT,
    SCOPE,
    exchange,
    follows_clock,
    scope_set,
    store_code,
)
from harness.clock import ManualClock
from harness.repository import AuthCodeParams, RefreshTokenClaim
from harness.scenario import ScenarioError
from harness.sut.tokens import ACCESS_TOKEN_TTL_S, Tokens
from harness.targets.capabilities import Capability

#: The resource indicator the code is issued for (RFC 8707 §2: an absolute URI, no fragment).
RESOURCE = "https://api.example/"
#: How many rotations a check follows: the first one copies what the exchange stored, the second
#: copies what a rotation stored, so a bug in either path shows.
ROTATIONS = 2


def _active(target: Any, access_token: str) -> bool:
    return target.introspect_access_token(access_token) is not None


@check(
    id="token.access-expiry",
    title="An access token stops working after its expires_in",
    source="RFC 6749 §4.2.2, §5.1 (expires_in); RFC 6750 §5.3; RFC 7662 §2.2",
    severity="high",
    expected="Active right after issue and 1 s before the lifetime the token response declared "
             "(expires_in) runs out; inactive 1 s after it (introspection says active: false).",
    requires={Capability.CLOCK, Capability.INTROSPECT},
)
def access_expiry(ctx: Context) -> None:
    """A bearer token is usable by whoever holds it (RFC 6750 §5.3 wants short lifetimes), so its
    ``exp`` is the one bound on a stolen copy; a resource server that checks the signature and not
    the expiry turns every leaked access token into a permanent one."""
    clock = ManualClock()
    target, client = ctx.target(clock=clock), ctx.client()
    follows_clock(target, clock)
    code = store_code(ctx, target, "access", client)
    tokens = exchange(ctx, target, code, client, None, "exchange a code")
    # The lifetime the server announced (RFC 6749 §5.1); the shipped default if it announced none.
    ttl = tokens.expires_in if tokens.expires_in > 0 else ACCESS_TOKEN_TTL_S
    ctx.sc.note("expires_in of the token response", f"{tokens.expires_in} s"
                + ("" if tokens.expires_in > 0 else f" (none: {ACCESS_TOKEN_TTL_S} s assumed)"))
    if not _active(target, tokens.access_token):
        raise ScenarioError("the access token is not active right after issue: expiry cannot be judged")
    ctx.sc.observe("introspect right after issue", expected="active", observed="active", ok=True,
                   judged=False)
    clock.advance(ttl - 1)
    before = _active(target, tokens.access_token)
    # Not judged: a token that dies early is an inconvenience, not a security property.
    ctx.sc.observe(f"introspect {ttl - 1} s after issue", expected="active",
                   observed="active" if before else "inactive", ok=before, judged=False)
    clock.advance(2)
    after = _active(target, tokens.access_token)
    ctx.sc.observe(f"introspect {ttl + 1} s after issue (past exp)", expected="inactive",
                   observed="active" if after else "inactive", ok=not after)


@check(
    id="token.resource",
    title="The resource a code was issued for stays on every token of its family",
    source="RFC 8707 §2.1, §2.2; RFC 6749 §6",
    severity="medium",
    expected=f"A code stored with resource={RESOURCE!r}: the refresh token of the exchange and "
             f"the one of each of {ROTATIONS} rotations carry exactly that resource (never dropped, "
             "which would make the next access tokens good at every resource, never replaced); an "
             "access token that names its audience names that one.",
    requires={Capability.STORE, Capability.REPOSITORY},
)
def resource(ctx: Context) -> None:
    """RFC 8707 §2.2: a refresh token is bound to the resources of its grant, and the access
    tokens it later yields are audience-restricted to them; a rotation that forgets the resource
    widens every later access token to any resource server."""
    target, client = ctx.target(), ctx.client()
    code = ctx.name("code-resource")
    params = AuthCodeParams(code=code, client_id=client, user_id=ctx.user, redirect_uri=REDIRECT,
                            scope=SCOPE, resource=RESOURCE)
    ctx.sc.setup(f"store a code with resource {RESOURCE!r}", partial(target.store_authorization_code, params))
    tokens = exchange(ctx, target, code, client, None, "exchange it")
    for step in range(ROTATIONS + 1):
        label = "the exchange's refresh token" if step == 0 else f"the refresh token of rotation {step}"
        if step:
            tokens = ctx.sc.setup(f"rotation {step}", partial(target.refresh, tokens.refresh_token, client))
        claim = _claim(ctx, target, tokens, client, label)
        ctx.sc.observe(f"resource of {label} (validate_refresh_token)", expected=repr(RESOURCE),
                       observed=repr(claim.resource), ok=claim.resource == RESOURCE)
        _audience(ctx, target, tokens, label.replace("refresh", "access"))


def _claim(ctx: Context, target: Any, tokens: Tokens, client: str, label: str) -> RefreshTokenClaim:
    """What the target says a just-issued refresh token carries (read-only). Refusing a token it
    has just issued leaves nothing to compare: a setup failure, not a verdict."""
    claim: RefreshTokenClaim = ctx.sc.setup(
        f"validate_refresh_token of {label}",
        partial(target.validate_refresh_token, tokens.refresh_token, client))
    return claim


def _audience(ctx: Context, target: Any, tokens: Tokens, label: str) -> None:
    """Judge the access token's audience when the target says what it is (RFC 8707 §2.2, RFC 7662
    §2.2 ``aud``); the shipped targets' tokens name none, which is only noted."""
    if not ctx.has(Capability.INTROSPECT):
        return
    claims = target.introspect_access_token(tokens.access_token) or {}
    aud = claims.get("aud", claims.get("resource"))
    if aud is None:
        ctx.sc.note(f"audience of {label}", "not stated by the token's claims")
        return
    auds = {aud} if isinstance(aud, str) else set(aud)
    ctx.sc.observe(f"audience of {label}", expected=repr(RESOURCE), observed=sorted(auds),
                   ok=auds == {RESOURCE})


def _requested_scope(ctx: Context, target: Any, client: str) -> str:
    """The scope the authorization request asked for: the harness's own in process, the client's
    ``scope`` of the endpoint description over HTTP (what ``/authorize`` was sent)."""
    description = getattr(target, "description", None)
    if ctx.remote and description is not None:
        return str(description.client(client).scope or "")
    return SCOPE


def _judge_scope(ctx: Context, action: str, scope: str, granted: frozenset[str]) -> None:
    got = scope_set(scope)
    if not got:
        # RFC 6749 §5.1: scope may be omitted when it is identical to the one granted.
        ctx.sc.observe(action, expected=f"⊆ {' '.join(sorted(granted))}", observed="(omitted: unchanged)",
                       ok=True)
        return
    wider = sorted(got - granted)
    narrower = sorted(granted - got)
    observed = " ".join(sorted(got)) + (f" (added: {' '.join(wider)})" if wider else "") + (
        f" (narrowed: {' '.join(narrower)} dropped)" if narrower else "")
    ctx.sc.observe(action, expected=f"⊆ {' '.join(sorted(granted))}", observed=observed, ok=not wider)


@check(
    id="token.scope",
    title="A refresh never widens the scope",
    source="RFC 6749 §6, §3.3, §5.1",
    severity="high",
    expected=f"The exchange grants at most the scope requested; each of {ROTATIONS} rotations "
             "(requested without a scope, so 'treated as equal to the scope originally granted') "
             "returns no scope token that was not granted, and the refresh token it issues carries "
             "the original scope (in process: validate_refresh_token; introspection, when offered).",
)
def scope(ctx: Context) -> None:
    """RFC 6749 §6: a refresh MUST NOT yield a scope the resource owner did not grant. A refresh
    that reissues the client's registered (or the server's default) scopes escalates the
    privileges of every long-lived session at its first rotation."""
    target, client = ctx.target(), ctx.client()
    requested = scope_set(_requested_scope(ctx, target, client))
    code = store_code(ctx, target, "scope", client)
    tokens = exchange(ctx, target, code, client, None, "exchange a code")
    if requested:
        _judge_scope(ctx, "scope of the exchange's token response", tokens.scope, requested)
    granted = (scope_set(tokens.scope) & requested if requested else scope_set(tokens.scope)) or requested
    if not granted:
        raise ScenarioError("neither the request nor the token response states a scope: nothing to compare")
    ctx.sc.note("scope granted (the baseline)", " ".join(sorted(granted)))
    for step in range(1, ROTATIONS + 1):
        tokens = ctx.sc.setup(f"rotation {step} (no scope requested)",
                              partial(target.refresh, tokens.refresh_token, client))
        _judge_scope(ctx, f"scope of rotation {step}'s token response", tokens.scope, granted)
        if ctx.has(Capability.REPOSITORY):
            claim = _claim(ctx, target, tokens, client, f"rotation {step}'s refresh token")
            _judge_scope(ctx, f"scope carried by rotation {step}'s refresh token", claim.scope, granted)
        if ctx.has(Capability.INTROSPECT):
            claims = target.introspect_access_token(tokens.access_token) or {}
            if "scope" in claims:
                _judge_scope(ctx, f"scope of rotation {step}'s access token (introspection)",
                             str(claims["scope"]), granted)
