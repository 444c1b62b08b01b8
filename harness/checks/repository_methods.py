"""The repository methods no grant calls (RFC 6749 §6, §10.4; RFC 7009 §2; RFC 9700 §4.14.2).

``exchange_code`` and ``refresh`` exercise the claim, issue and link paths, and every other check
drives those. The seed's repository has more: a cleanup job, a one-token revocation, lookups of a
code's or a token's client and family, a read-only validation. Operators' tools, revocation
endpoints and cron jobs call them, and a bug there (a lookup that forgot the at-rest digest, a
cleanup that deletes live tokens) is invisible to a grant-level scan. Each behaviour is a check of
its own, so a verdict names the method at fault.

They need ``repository`` (the lower methods); a target that has that group but lacks one method
answers ``not_applicable`` naming it, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from harness.checks import SHIPPED_TARGETS, Context, check
from harness.checks._common import (
    SCOPE,
    exchange,
    family_frame,
    follows_clock,
    method,
    records,
    short,
    store_code,
    tells_time_by,
    token_rows,
)
from harness.clock import ManualClock
from harness.repository import RefreshTokenParams
from harness.scenario import NotApplicable, call
from harness.sut.tokens import REFRESH_TOKEN_TTL_S, Tokens, new_refresh_token
from harness.targets.capabilities import Capability

DAY_S = 24 * 3600
#: Where the cleanup check's clock starts. Every row of any real database was written after it,
#: so a cleanup run at this clock (a month later) can only reach tokens issued by this clock: the
#: check's own. The guard in ``cleanup_expired`` verifies that before anything is deleted.
PAST = datetime(2001, 1, 1, tzinfo=UTC)


def _issued(ctx: Context, target: Any, client: str, label: str) -> Tokens:
    code = store_code(ctx, target, label, client)
    return exchange(ctx, target, code, client, None, f"exchange code {label!r}")


def _label(value: object, known: dict[str, str]) -> str:
    """What a returned value is, in words: a known one by its name, else a shortened form.

    Returned family ids may be raw tokens on a buggy target, so an unknown string is shown only as
    a prefix (never enough to use), and a known one by name."""
    if value is None:
        return "None"
    if isinstance(value, str) and value in known:
        return known[value]
    return f"another value ({short(value, 8)!r})" if isinstance(value, str) else repr(type(value).__name__)


def _ask(ctx: Context, action: str, fn: Callable[[], Any], want: object, known: dict[str, str]) -> None:
    """Call a lookup and judge its answer against ``want`` (a refusal is a wrong answer too)."""
    out = call(fn)
    observed = _label(out.value, known) if out.ok else out.describe()
    ctx.sc.observe(action, expected=_label(want, known), observed=observed,
                   ok=out.ok and out.value == want and type(out.value) is type(want))


# -- cleanup_expired_refresh_tokens ---------------------------------------------------------------


def _foreign_rows_in_reach(ctx: Context, mine: str, now: datetime, *, known_code: bool) -> int:
    """Refresh tokens the check did not create that the cleanup about to run could delete (read-only).

    For a shipped target (``known_code``) the harness knows every predicate its cleanup can use, and
    each compares a timestamp with the clock it was given (``naive``'s bug uses ``created_at``): a
    row counts if any of its timestamps is before ``now``, which is in 2001. A target the harness
    does not know may delete by SQL ``now()``, by ``consumed_at IS NOT NULL``, by anything: then
    every row the check did not create counts, so the method runs only on a table holding nothing
    else (a dedicated database, never someone's staging data).
    """
    reach = ("AND (expires_at < %(now)s OR created_at < %(now)s OR consumed_at < %(now)s)"
             if known_code else "")
    with ctx.rows.connect() as conn:
        row = conn.execute(
            f"SELECT count(*) FROM oauth_refresh_tokens WHERE NOT starts_with(client_id, %(mine)s) {reach}",
            {"mine": mine, "now": now}).fetchone()
    return int(row[0]) if row else 0


@check(
    id="repository.cleanup-expired",
    title="cleanup_expired_refresh_tokens deletes the expired tokens, only them, and counts them",
    source="RFC 6749 §6, §10.4; RFC 9700 §4.14.2; seed: OAuthRepository::cleanup_expired_refresh_tokens",
    severity="medium",
    expected="Run with the clock a month after a token's issue: the token past its expires_at is "
             "deleted; a family issued 29 days later (older than any access token, unexpired) keeps "
             "both its live token, which still refreshes, and its rotated-out one (reuse detection "
             "needs it); the count returned is the number of rows deleted. The check runs only when "
             "no row it did not create is within the cleanup's reach.",
    requires={Capability.CLOCK, Capability.ROWS, Capability.REPOSITORY},
)
def cleanup_expired(ctx: Context) -> None:
    """The method deletes across the whole table, so on someone else's database it would delete
    their expired tokens too. The target therefore runs on a clock set in 2001: its own tokens are
    the only ones that can be expired at that clock's now, and a read-only count proves, before
    the cleanup runs, that no foreign row has a timestamp that early. A target that does not tell
    time by the clock it is given is not run at all, and one the harness does not ship (whose
    DELETE it cannot read) only on a table holding no refresh token but the check's own."""
    clock = ManualClock(PAST)
    target = ctx.target(clock=clock)
    follows_clock(target, clock)
    cleanup = method(target, "cleanup_expired_refresh_tokens")
    expired_client, live_client = ctx.client("expired"), ctx.client("live")
    _issued(ctx, target, expired_client, "expires")
    clock.advance(REFRESH_TOKEN_TTL_S - DAY_S)
    issued = _issued(ctx, target, live_client, "lives")
    # Rotated once: its predecessor is consumed but unexpired, and must stay, since reuse
    # detection (RFC 9700 §4.14.2) can only recognise a token it still has a row for.
    live: Tokens = ctx.sc.setup("refresh the second client's token (rotate)",
                                partial(target.refresh, issued.refresh_token, live_client))
    clock.advance(DAY_S + 60)
    now = clock.now()
    ctx.sc.note("the target's clock", f"{now:%Y-%m-%d %H:%M} UTC: the first client's token expired "
                                      "60 s ago; the second client's two (one rotated out) expire in "
                                      "29 days")
    doomed, kept = token_rows(ctx, [expired_client]), token_rows(ctx, [live_client])
    # The target must have stamped its rows by this clock; otherwise its cleanup may use another.
    if not doomed or not kept or any(r[3] >= now for r in doomed) or any(r[3] < now for r in kept):
        raise NotApplicable("the target's refresh tokens do not expire by the clock it was given: "
                            "its cleanup could reach rows the harness did not write")
    known = ctx.target_name in SHIPPED_TARGETS
    # Rows of this run are the harness's own (a notebook keeps every check's rows until its end);
    # anything else is someone's data the cleanup must not be able to reach.
    mine = ctx.scope.prefix if ctx.scope is not None else ctx.name("client-")
    foreign = _foreign_rows_in_reach(ctx, mine, now, known_code=known)
    if foreign:
        reach = ("a cleanup at this clock" if known else
                 "a cleanup whose predicate the harness cannot know (a target it does not ship)")
        raise NotApplicable(f"{foreign} refresh token(s) the check did not create are within reach of "
                            f"{reach}; the method deletes across the whole table, so it is not run")
    ctx.sc.observe("rows of other clients within the cleanup's reach (read-only count)", expected="0",
                   observed=foreign, ok=True, judged=False)
    count = ctx.sc.setup("cleanup_expired_refresh_tokens()", cleanup)
    ctx.sc.observe("count returned", expected=str(len(doomed)), observed=repr(count),
                   ok=isinstance(count, int) and count == len(doomed))
    gone = len(token_rows(ctx, [expired_client]))
    ctx.sc.observe("rows left of the expired token", expected="0", observed=gone, ok=gone == 0)
    left = len(token_rows(ctx, [live_client]))
    ctx.sc.observe("rows left of the unexpired family (live and rotated-out tokens)",
                   expected=str(len(kept)), observed=left, ok=left == len(kept))
    ctx.sc.attempt("refresh with the family's live token", "ok",
                   partial(target.refresh, live.refresh_token, live_client))


# -- revoke_refresh_token ---------------------------------------------------------------------------


@check(
    id="repository.revoke-token",
    title="revoke_refresh_token revokes exactly the token it is given",
    source="RFC 7009 §2.1; RFC 6749 §10.4; seed: OAuthRepository::revoke_refresh_token",
    severity="high",
    expected="Revoking a family's newest token returns True and the token is refused afterwards; "
             "another live token of the same family and a token of another family stay valid; "
             "revoking an unknown token returns False (for the operator: a revocation endpoint "
             "still answers 200, RFC 7009 §2.2).",
    requires={Capability.REPOSITORY},
)
def revoke_token(ctx: Context) -> None:
    clock = ManualClock()
    target, client = ctx.target(clock=clock), ctx.client()
    revoke = method(target, "revoke_refresh_token")
    first = _issued(ctx, target, client, "revoked")
    newest: Tokens = ctx.sc.setup("refresh (rotate)", partial(target.refresh, first.refresh_token, client))
    sibling: str | None = None
    store = getattr(target, "store_refresh_token", None)
    if callable(store) and newest.family_id:
        # Rotation keeps one live token per family, so a second one is stored directly, as a
        # repository-level caller would.
        sibling = new_refresh_token()
        ctx.sc.setup("store a second live token in the same family (store_refresh_token)", partial(
            store, RefreshTokenParams(token_id=sibling, client_id=client, user_id=ctx.user, scope=SCOPE,
                                      expires_at=clock.now() + timedelta(seconds=REFRESH_TOKEN_TTL_S),
                                      family_id=newest.family_id)))
    else:
        ctx.sc.note("a second live token in the same family",
                    "not applicable: the target has no store_refresh_token()")
    other = _issued(ctx, target, client, "bystander")
    out = call(partial(revoke, newest.refresh_token))
    ctx.sc.observe("revoke_refresh_token(the family's newest token)", expected="True",
                   observed=repr(out.value) if out.ok else out.describe(), ok=out.ok and out.value is True)
    # Read-only checks first: presenting the revoked token may (rightly) look like reuse and
    # revoke the family, which would hide whether the revocation itself reached the others.
    if sibling is not None:
        ctx.sc.attempt("the other live token of the same family (validate_refresh_token)", "ok",
                       partial(target.validate_refresh_token, sibling, client))
    ctx.sc.attempt("a token of another family (validate_refresh_token)", "ok",
                   partial(target.validate_refresh_token, other.refresh_token, client))
    ctx.sc.attempt("refresh with the revoked token", "refused",
                   partial(target.refresh, newest.refresh_token, client))
    unknown = call(partial(revoke, new_refresh_token()))
    ctx.sc.observe("revoke_refresh_token(a token never issued)", expected="False",
                   observed=repr(unknown.value) if unknown.ok else unknown.describe(),
                   ok=unknown.ok and unknown.value is False)
    ctx.sc.evidence.extend(ctx.sc.judged_steps())
    ctx.sc.evidence.extend(records(family_frame(ctx, [first.family_id, other.family_id])))


# -- lookups ----------------------------------------------------------------------------------------


@check(
    id="repository.code-client",
    title="get_client_id_from_auth_code names a code's client; None for an unknown code",
    source="RFC 6749 §4.1.3, §10.5; seed: OAuthRepository::get_client_id_from_auth_code",
    severity="medium",
    expected="Each of two clients' codes yields its own client id; a code never issued yields None "
             "(not an empty string or another falsy stand-in a caller's `is None` test misses).",
    requires={Capability.REPOSITORY},
)
def code_client(ctx: Context) -> None:
    target = ctx.target()
    lookup = method(target, "get_client_id_from_auth_code")
    owner, other = ctx.client("owner"), ctx.client("other")
    names = {owner: "the owner's client id", other: "the other client's id"}
    mine = store_code(ctx, target, "owner", owner)
    theirs = store_code(ctx, target, "other", other)
    _ask(ctx, "get_client_id_from_auth_code(the owner's code)", partial(lookup, mine), owner, names)
    _ask(ctx, "get_client_id_from_auth_code(the other client's code)", partial(lookup, theirs), other, names)
    _ask(ctx, "get_client_id_from_auth_code(a code never issued)",
         partial(lookup, ctx.name("code-never-issued")), None, names)


@check(
    id="repository.token-family",
    title="find_refresh_token_family names a token's family, rotated or not; None if unknown",
    source="RFC 9700 §4.14.2; RFC 6819 §5.2.2.3; seed: OAuthRepository::find_refresh_token_family",
    severity="medium",
    expected="The exchange's token and the token its rotation issued both yield the family the "
             "exchange reported; a token of another code yields another family; a token never "
             "issued yields None. Revocation by family is only as good as this lookup.",
    requires={Capability.REPOSITORY},
)
def token_family(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    find = method(target, "find_refresh_token_family")
    first = _issued(ctx, target, client, "family")
    newest: Tokens = ctx.sc.setup("refresh (rotate)", partial(target.refresh, first.refresh_token, client))
    other = _issued(ctx, target, client, "other-family")
    found = call(partial(find, first.refresh_token))
    # The family the exchange reported; a target whose responses carry none is judged by
    # consistency alone (the first lookup is then the reference).
    family = first.family_id or (found.value if found.ok else None)
    names = {str(family): "the exchange's family"} if family else {}
    _ask(ctx, "find_refresh_token_family(the exchange's token)", partial(find, first.refresh_token),
         family, names)
    _ask(ctx, "find_refresh_token_family(the rotation's token)", partial(find, newest.refresh_token),
         family, names)
    theirs = call(partial(find, other.refresh_token))
    ctx.sc.observe("find_refresh_token_family(a token of another code)",
                   expected="another family, not None",
                   observed=_label(theirs.value, names) if theirs.ok else theirs.describe(),
                   ok=theirs.ok and isinstance(theirs.value, str) and theirs.value != family)
    _ask(ctx, "find_refresh_token_family(a token never issued)", partial(find, new_refresh_token()),
         None, names)


@check(
    id="repository.token-client",
    title="find_client_id_from_refresh_token names a token's client, rotated or not; None if unknown",
    source="RFC 6749 §6, §10.4; seed: OAuthRepository::find_client_id_from_refresh_token",
    severity="medium",
    expected="The exchange's token and the token its rotation issued both yield their client; "
             "another client's token yields that client; a token never issued yields None.",
    requires={Capability.REPOSITORY},
)
def token_client(ctx: Context) -> None:
    target = ctx.target()
    find = method(target, "find_client_id_from_refresh_token")
    owner, other = ctx.client("owner"), ctx.client("other")
    names = {owner: "the owner's client id", other: "the other client's id"}
    first = _issued(ctx, target, owner, "owner")
    newest: Tokens = ctx.sc.setup("refresh (rotate)", partial(target.refresh, first.refresh_token, owner))
    theirs = _issued(ctx, target, other, "other")
    _ask(ctx, "find_client_id_from_refresh_token(the exchange's token)",
         partial(find, first.refresh_token), owner, names)
    _ask(ctx, "find_client_id_from_refresh_token(the rotation's token)",
         partial(find, newest.refresh_token), owner, names)
    _ask(ctx, "find_client_id_from_refresh_token(the other client's token)",
         partial(find, theirs.refresh_token), other, names)
    _ask(ctx, "find_client_id_from_refresh_token(a token never issued)",
         partial(find, new_refresh_token()), None, names)


# -- validate_refresh_token -------------------------------------------------------------------------


@check(
    id="repository.validate-refresh",
    title="validate_refresh_token refuses consumed, foreign and expired tokens, and writes nothing",
    source="RFC 6749 §6, §10.4; RFC 9700 §4.14.2; seed: OAuthRepository::validate_refresh_token",
    severity="medium",
    expected="The family's live token validates for its owner; the rotated-out (consumed) token, "
             "the live one presented by another client, a token never issued and (with a clock) "
             "the live one after its expires_at are refused; no row changes.",
    requires={Capability.REPOSITORY},
)
def validate_refresh(ctx: Context) -> None:
    """A read-only answer to "is this token good?" (a revocation or introspection endpoint asks
    it). Saying yes to a consumed token hands out what rotation retired; writing anything (say,
    consuming, or revoking on reuse) turns a question into an action."""
    clock = ManualClock()
    target = ctx.target(clock=clock)
    owner, other = ctx.client("owner"), ctx.client("other")
    validate = target.validate_refresh_token
    first = _issued(ctx, target, owner, "validated")
    newest: Tokens = ctx.sc.setup("refresh (rotate)", partial(target.refresh, first.refresh_token, owner))
    rows = ctx.has(Capability.ROWS)
    before = token_rows(ctx, [owner, other]) if rows else []
    ctx.sc.attempt("the live token, by its owner", "ok", partial(validate, newest.refresh_token, owner))
    ctx.sc.attempt("the rotated-out (consumed) token, by its owner", "refused",
                   partial(validate, first.refresh_token, owner))
    ctx.sc.attempt("the live token, by another client", "refused",
                   partial(validate, newest.refresh_token, other))
    ctx.sc.attempt("a token never issued", "refused", partial(validate, new_refresh_token(), owner))
    if ctx.has(Capability.CLOCK) and tells_time_by(target, clock):
        clock.advance(REFRESH_TOKEN_TTL_S + 1)
        ctx.sc.attempt(f"the live token, {REFRESH_TOKEN_TTL_S + 1} s after issue (expired)", "refused",
                       partial(validate, newest.refresh_token, owner))
    else:
        ctx.sc.note("an expired token", "not applicable: the target's clock cannot be moved")
    if rows:
        after = token_rows(ctx, [owner, other])
        changed = sum(a != b for a, b in zip(before, after, strict=False)) + abs(len(after) - len(before))
        ctx.sc.observe("refresh-token rows changed by the validations", expected="0", observed=changed,
                       ok=changed == 0, rows=family_frame(ctx, [first.family_id]))
    else:
        ctx.sc.note("rows written", "not applicable: the target's rows cannot be read")
