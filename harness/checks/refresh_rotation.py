"""Refresh-token rotation checks (RFC 6749 §6, §10.4; RFC 9700 §4.14.2): reuse, races, expiry, grace."""

from __future__ import annotations

from functools import partial

from harness.checks import Context, check
from harness.checks._common import exchange, family_frame, live_refresh, outcome_row, records, store_code
from harness.clock import ManualClock
from harness.errors import SetupError
from harness.scenario import NotApplicable, ScenarioError, force_interleaving
from harness.sut.faithful import OAuthRepository
from harness.sut.hooks import StepHook
from harness.sut.tokens import REFRESH_TOKEN_TTL_S, Tokens
from harness.targets.capabilities import Capability

#: Where a refresh can be paused: the naive control between its SELECT and its UPDATE, the
#: others right after the consuming UPDATE (before the new token is issued).
CONSUME_PAUSE_POINTS = (StepHook.BETWEEN_READ_AND_WRITE, StepHook.AFTER_CONSUME)


def _issued(ctx: Context, target: OAuthRepository, client: str, label: str = "exchange a code",
            code_label: str = "for-refresh") -> Tokens:
    code = store_code(ctx, target, code_label, client)
    return exchange(ctx, target, code, client, None, label)


@check(
    id="refresh.rotation",
    title="Rotation kills the old token; reusing it kills the whole family",
    source="RFC 9700 §4.14.2; RFC 6749 §6",
    severity="high",
    expected="After a refresh the old token is refused, and presenting it revokes the family: the "
             "newest token is refused too.",
)
def rotation(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    first = _issued(ctx, target, client)
    newest: Tokens = ctx.sc.setup("refresh (rotate)", lambda: target.refresh(first.refresh_token, client))
    ctx.sc.attempt("refresh with the rotated-out token", "refused",
                   lambda: target.refresh(first.refresh_token, client))
    ctx.sc.attempt("refresh with the newest token", "refused",
                   lambda: target.refresh(newest.refresh_token, client), why="reuse revoked the family")
    ctx.sc.evidence.extend(ctx.sc.judged_steps())
    ctx.sc.evidence.extend(records(family_frame(ctx, [first.family_id])))


@check(
    id="refresh.concurrent",
    title="Two refreshes of one token: at most one winner, and reuse detection still revokes it",
    source="RFC 9700 §4.14.2; RFC 6749 §10.4",
    severity="high",
    expected="With a second refresh of the same token forced while the first is between consuming "
             "it and issuing the new one: at most one succeeds, and since the other is a reuse, no "
             "token of the family survives (the winner's new one included).",
    requires={Capability.STEP_HOOKS},
)
def concurrent(ctx: Context) -> None:
    first_side, second_side, client = ctx.target(), ctx.target(), ctx.client()
    tokens = _issued(ctx, first_side, client)
    il = force_interleaving(first_side, lambda: first_side.refresh(tokens.refresh_token, client),
                            CONSUME_PAUSE_POINTS,
                            lambda: second_side.refresh(tokens.refresh_token, client), db=ctx.rows)
    if il.paused_at is None:
        raise NotApplicable("the target calls none of the step hooks "
                            f"{', '.join(CONSUME_PAUSE_POINTS)}: the interleaving cannot be forced")
    if not il.happened:
        raise ScenarioError("the forced interleaving did not happen")
    assert il.first is not None and il.second is not None
    ctx.sc.observe(f"second refresh forced while the first paused at {il.paused_at}",
                   expected="second inside the first's rotation", observed="yes", ok=True,
                   rows=il.timeline(), judged=False)
    winners = [o for o in (il.first, il.second) if o.ok]
    ctx.sc.observe("refreshes that obtained a new token", expected="≤ 1", observed=len(winners),
                   ok=len(winners) <= 1)
    for i, won in enumerate(winners):
        new: Tokens = won.value
        ctx.sc.attempt(f"use the new refresh token of winner #{i + 1}", "refused",
                       partial(second_side.refresh, new.refresh_token, client),
                       why="the concurrent presentation was a reuse")
    ctx.sc.evidence.extend([*il.rows(), outcome_row("first refresh", il.first),
                            outcome_row("second refresh", il.second)])
    ctx.sc.evidence.extend(records(family_frame(ctx, [tokens.family_id])))


@check(
    id="refresh.expiry",
    title="An expired refresh token is refused",
    source="RFC 6749 §6, §10.4",
    severity="medium",
    expected="A refresh token presented after its expires_at is refused.",
    requires={Capability.CLOCK},
)
def expiry(ctx: Context) -> None:
    clock = ManualClock()
    target, client = ctx.target(clock=clock), ctx.client()
    tokens = _issued(ctx, target, client)
    clock.advance(REFRESH_TOKEN_TTL_S + 1)
    ctx.sc.attempt(f"refresh {REFRESH_TOKEN_TTL_S + 1} s after issue", "refused",
                   lambda: target.refresh(tokens.refresh_token, client))


@check(
    id="refresh.client-binding",
    title="A refresh token works only for the client it was issued to",
    source="RFC 6749 §6, §10.4",
    severity="high",
    expected="Another client presenting the token is refused and consumes nothing; the owner can "
             "still refresh.",
)
def client_binding(ctx: Context) -> None:
    target, victim, other = ctx.target(), ctx.client("victim"), ctx.client("other")
    tokens = _issued(ctx, target, victim)
    ctx.sc.attempt("another client refreshes with the victim's token", "refused",
                   lambda: target.refresh(tokens.refresh_token, other))
    ctx.sc.attempt("the owner refreshes afterwards", "ok",
                   lambda: target.refresh(tokens.refresh_token, victim))


GRACE_S = 30.0


@check(
    id="refresh.grace-policy",
    title="Reuse policy, both ways: strict reuse detection and a grace window for the client's retry",
    source="RFC 9700 §4.14.2",
    severity="medium",
    expected="Strict (grace 0): a retry of a rotated-out token revokes the family. Grace window "
             f"({GRACE_S:.0f} s): the same client's retry inside the window is served, but leaves "
             "exactly one live token in the family (else two branches live on and reuse can no "
             "longer be detected); outside the window reuse revokes the family.",
)
def grace_policy(ctx: Context) -> None:
    if not ctx.has(Capability.OPTIONS, Capability.CLOCK, Capability.REPOSITORY):
        _observed_policy(ctx)
        return
    for mode, grace in (("strict", 0.0), ("grace", GRACE_S)):
        clock = ManualClock()
        try:
            target = ctx.target(clock=clock, refresh_reuse_grace_s=grace)
        except SetupError as exc:
            raise NotApplicable(f"the target takes no refresh_reuse_grace_s option: {exc}") from exc
        client = ctx.client(mode)
        first = _issued(ctx, target, client, f"[{mode}] exchange a code", f"for-refresh-{mode}")
        second: Tokens = ctx.sc.setup(f"[{mode}] refresh (rotate)",
                                      partial(target.refresh, first.refresh_token, client))
        clock.advance(1)
        if mode == "strict":
            ctx.sc.attempt("[strict] the client retries the rotated-out token 1 s later", "refused",
                           partial(target.refresh, first.refresh_token, client))
            ctx.sc.attempt("[strict] refresh with the token the rotation issued", "refused",
                           partial(target.refresh, second.refresh_token, client),
                           why="reuse revoked the family; the client must re-authorize")
            continue
        retry = ctx.sc.attempt(f"[grace] the client retries the rotated-out token 1 s later "
                               f"(inside {GRACE_S:.0f} s)", "ok",
                               partial(target.refresh, first.refresh_token, client))
        heads = [second] + ([retry.value] if retry.ok else [])
        live = sum(live_refresh(target, h.refresh_token, client) for h in heads)
        ctx.sc.observe("[grace] live refresh tokens in the family after the retry", expected="1",
                       observed=live, ok=live == 1, rows=family_frame(ctx, [first.family_id]))
        clock.advance(GRACE_S * 2)
        ctx.sc.attempt(f"[grace] reuse the first token {GRACE_S * 2 + 1:.0f} s after its rotation "
                       "(outside the window)", "refused",
                       partial(target.refresh, first.refresh_token, client))
        newest = heads[-1]
        ctx.sc.attempt("[grace] refresh with the newest token", "refused",
                       partial(target.refresh, newest.refresh_token, client),
                       why="reuse outside the window revoked the family")


def _observed_policy(ctx: Context) -> None:
    """Black box: the server's own policy (it cannot be reconfigured), judged whichever it is.

    The client retries its rotated-out token at once. Strict reuse detection refuses the retry
    and revokes the family, so the token the rotation issued is refused too. A grace window
    serves the retry, but then only one of the two branches may stay usable (RFC 9700 §4.14.2:
    reuse must stay detectable): the rotation's token, presented after the retry, is refused.
    """
    target, client = ctx.target(), ctx.client()
    first = _issued(ctx, target, client)
    second: Tokens = ctx.sc.setup("refresh (rotate)", partial(target.refresh, first.refresh_token, client))
    retry = ctx.sc.attempt("the client retries the rotated-out token at once", "refused",
                           partial(target.refresh, first.refresh_token, client), judged=False)
    if not retry.ok:
        ctx.sc.note("observed policy", "strict reuse detection (the retry was refused)")
        ctx.sc.attempt("refresh with the token the rotation issued", "refused",
                       partial(target.refresh, second.refresh_token, client),
                       why="reuse revoked the family")
        return
    ctx.sc.note("observed policy", "a grace window (the retry was served)")
    ctx.sc.attempt("refresh with the token the rotation issued, after the retry", "refused",
                   partial(target.refresh, second.refresh_token, client),
                   why="the retry must retire the other branch: one live token per family")


@check(
    id="refresh.grace-cross-client",
    title="A grace window never lets another client reuse a rotated-out token",
    source="RFC 9700 §4.14.2; RFC 6749 §6, §10.4",
    severity="high",
    expected=f"With a grace window ({GRACE_S:.0f} s) where the target can be given one, else with "
             "the server's own policy: another client presenting the victim's rotated-out token "
             "inside the window is refused, and, since the token has evidently leaked, the "
             "victim's family is revoked (the token the rotation issued is refused too).",
)
def grace_cross_client(ctx: Context) -> None:
    """The window exists for one case: the *same* client lost the response to its refresh and
    retries. Another client holding the token can only have stolen it, so the presentation is
    plain reuse (RFC 9700 §4.14.2): refused, and the family revoked, as ``replay.cross-client``
    wants for a leaked code. Revoking costs the victim a re-authorization; not revoking leaves the
    thief's copy of the family's newest token usable."""
    clock = ManualClock()
    if ctx.has(Capability.OPTIONS):
        try:
            target = ctx.target(clock=clock, refresh_reuse_grace_s=GRACE_S)
        except SetupError as exc:
            raise NotApplicable(f"the target takes no refresh_reuse_grace_s option: {exc}") from exc
        ctx.sc.note("reuse policy", f"a grace window of {GRACE_S:.0f} s (refresh_reuse_grace_s)")
    else:
        target = ctx.target(clock=clock)
        ctx.sc.note("reuse policy", "the server's own (it cannot be given a grace window from outside)")
    victim, other = ctx.client("victim"), ctx.client("other")
    first = _issued(ctx, target, victim, "the victim exchanges a code")
    second: Tokens = ctx.sc.setup("the victim refreshes (rotate)",
                                  partial(target.refresh, first.refresh_token, victim))
    when = "at once"
    if ctx.has(Capability.CLOCK):
        clock.advance(1)
        when = "1 s later"
    window = "the window" if ctx.has(Capability.OPTIONS) else "any grace window the server keeps"
    ctx.sc.attempt(f"another client presents the victim's rotated-out token {when} (inside {window})",
                   "refused", partial(target.refresh, first.refresh_token, other))
    ctx.sc.attempt("the victim refreshes with the token the rotation issued", "refused",
                   partial(target.refresh, second.refresh_token, victim),
                   why="the token leaked: its family is revoked")
    ctx.sc.evidence.extend(ctx.sc.judged_steps())
    ctx.sc.evidence.extend(records(family_frame(ctx, [first.family_id])))
