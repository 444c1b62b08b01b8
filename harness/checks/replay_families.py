"""Replay and family checks (RFC 6749 §4.1.2; RFC 6819 §5.2.1.1, §5.2.2.3; RFC 9700 §4.14.2)."""

from __future__ import annotations

import re
from typing import Any

from harness import rfc7636
from harness.checks import Context, check
from harness.checks._common import (
    REDIRECT,
    code_row,
    exchange,
    family_frame,
    outcome_row,
    pkce_exchange,
    records,
    short,
    store_code,
)
from harness.logs import capture_everything
from harness.scenario import NotApplicable, ScenarioError, force_interleaving
from harness.sut.hooks import StepHook
from harness.sut.tokens import Tokens
from harness.targets.capabilities import Capability

_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


def _exchanged_and_rotated(ctx: Context, client: str) -> tuple[Any, str, Tokens, Tokens]:
    """A code exchanged and its refresh token rotated once: (target, code, first, newest tokens)."""
    target = ctx.target()
    code = store_code(ctx, target, "replayed", client)
    first = exchange(ctx, target, code, client, None, "exchange the code (family created, code linked)")
    newest: Tokens = ctx.sc.setup("rotate the refresh token once",
                                  lambda: target.refresh(first.refresh_token, client))
    return target, code, first, newest


@check(
    id="replay.revokes-family",
    title="Replaying a spent code revokes the whole refresh-token family",
    source="RFC 6749 §4.1.2; RFC 6819 §5.2.1.1",
    severity="high",
    expected="The replay is refused and every refresh token issued from the code, the newest "
             "(already rotated) one included, stops working.",
)
def revokes_family(ctx: Context) -> None:
    client = ctx.client()
    target, code, first, newest = _exchanged_and_rotated(ctx, client)
    ctx.sc.attempt("replay the spent code", "refused", lambda: target.exchange_code(code, client, REDIRECT))
    ctx.sc.attempt("refresh with the newest token of the family", "refused",
                   lambda: target.refresh(newest.refresh_token, client))
    ctx.sc.evidence.extend(ctx.sc.judged_steps())
    ctx.sc.evidence.extend(records(family_frame(ctx, [first.family_id])))


@check(
    id="replay.between-claim-and-link",
    title="A replay that lands between the claim and the link still revokes what the code issued",
    source="RFC 6749 §4.1.2; RFC 6819 §5.2.2.3",
    severity="high",
    expected="A replay forced while the first exchange has claimed the code but not yet linked its "
             "refresh token is refused, and the tokens that exchange then issues do not survive "
             "(or are never issued).",
    requires={Capability.STEP_HOOKS},
)
def between_claim_and_link(ctx: Context) -> None:
    first_side, replay_side, client = ctx.target(), ctx.target(), ctx.client()
    code = store_code(ctx, first_side, "mid-flight", client)
    il = force_interleaving(first_side, lambda: first_side.exchange_code(code, client, REDIRECT),
                            (StepHook.BEFORE_LINK,),
                            lambda: replay_side.exchange_code(code, client, REDIRECT), db=ctx.rows)
    if il.paused_at is None:
        raise NotApplicable("the target never calls the 'before_link' step hook")
    if not il.happened:
        raise ScenarioError("the forced interleaving did not happen")
    assert il.first is not None and il.second is not None
    ctx.sc.observe("replay forced between the claim and the link", expected="replay inside the gap",
                   observed="yes" + (" (it waited on the first's row lock)" if il.second_blocked else ""),
                   ok=True, rows=il.timeline(), judged=False)
    ctx.sc.observe("the replay", expected="refused", observed=il.second.describe(), ok=not il.second.ok)
    if il.first.ok:
        tokens: Tokens = il.first.value
        ctx.sc.attempt("refresh with the token the first exchange issued", "refused",
                       lambda: replay_side.refresh(tokens.refresh_token, client),
                       why="the code was replayed")
    else:
        ctx.sc.observe("the first exchange", expected="refused or revoked", observed=il.first.describe(),
                       ok=True)
    ctx.sc.evidence.extend([*il.rows(), outcome_row("first exchange", il.first),
                            outcome_row("replay", il.second)])
    if ctx.has(Capability.ROWS, Capability.DIGEST):
        row = code_row(ctx, first_side, code)
        ctx.sc.evidence.append({"code_digest": short(first_side.hash(code)),
                                "refresh_token_id_linked": short(row["refresh_token_id"]) if row
                                else "no row"})


@check(
    id="replay.cross-client",
    title="A replay by another client revokes the victim's family",
    source="RFC 6749 §4.1.2; RFC 6819 §5.2.1.1",
    severity="medium",
    expected="Another client replaying a spent code is refused; since the code has evidently "
             "leaked, the family issued to its owner (newest token included) is revoked.",
)
def cross_client(ctx: Context) -> None:
    victim, other = ctx.client("victim"), ctx.client("other")
    target, code, first, newest = _exchanged_and_rotated(ctx, victim)
    ctx.sc.attempt("another client replays the victim's spent code", "refused",
                   lambda: target.exchange_code(code, other, REDIRECT))
    ctx.sc.attempt("the victim refreshes with its newest token", "refused",
                   lambda: target.refresh(newest.refresh_token, victim), why="the code leaked")
    ctx.sc.evidence.extend(ctx.sc.judged_steps())
    ctx.sc.evidence.extend(records(family_frame(ctx, [first.family_id])))


@check(
    id="replay.access-tokens",
    title="Access tokens issued from a replayed code stop working",
    source="RFC 6749 §4.1.2 (revoke all tokens issued on that code); RFC 6819 §5.2.1.1",
    severity="high",
    expected="After the replay, introspecting the access token issued by the exchange says it is "
             "inactive.",
    requires={Capability.INTROSPECT},
)
def access_tokens(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    if not callable(getattr(target, "introspect_access_token", None)):
        raise NotApplicable("the target has no introspect_access_token")
    code = store_code(ctx, target, "replayed", client)
    tokens = exchange(ctx, target, code, client, None, "exchange the code")
    before = target.introspect_access_token(tokens.access_token)
    ctx.sc.observe("introspect the access token before the replay", expected="active",
                   observed="active" if before else "inactive", ok=before is not None, judged=False)
    ctx.sc.attempt("replay the spent code", "refused", lambda: target.exchange_code(code, client, REDIRECT))
    after = target.introspect_access_token(tokens.access_token)
    ctx.sc.observe("introspect the access token after the replay", expected="inactive",
                   observed="active until its exp" if after else "inactive", ok=after is None)
    ctx.sc.evidence.append({"access_token_family": short(tokens.family_id),
                            "active_before": before is not None, "active_after": after is not None})


@check(
    id="replay.log-secrets",
    title="No raw secret in the log lines of an exchange, a rotation and a replay",
    source="RFC 6819 §4.4.1.1, §5.1.4.1.3 (no cleartext credentials); RFC 6749 §10.5",
    severity="medium",
    expected="Nothing the target writes while it exchanges, rotates, refuses a replay and a wrong "
             "verifier (a log record of any logger at any level, message, field or traceback; a "
             "line on stdout or stderr) carries a raw code, verifier, refresh or access token or "
             "the pepper; digests (or a prefix of one) identify the row instead.",
    requires={Capability.IN_PROCESS},
)
def log_secrets(ctx: Context) -> None:
    """Everything is captured (``harness.logs.capture_everything``), not just ``harness.oauth``: a
    reviewer's target logs through its own logger, at INFO or DEBUG, in ``extra=`` fields, or
    simply prints, and a collector at another level or a container's stdout would keep the line.
    The lines never reach the console (they carry the very secrets under test)."""
    target, client = ctx.target(), ctx.client()
    other_verifier = rfc7636.new_verifier()
    other = store_code(ctx, target, "logged-wrong", client, verifier=other_verifier)
    with capture_everything() as captured:
        code, verifier, tokens = pkce_exchange(ctx, target, client, "logged")
        rotated = ctx.sc.setup("rotate", lambda: target.refresh(tokens.refresh_token, client))
        ctx.sc.attempt("replay the spent code", "refused",
                       lambda: target.exchange_code(code, client, REDIRECT, verifier), judged=False)
        ctx.sc.attempt("a wrong verifier on another code", "refused",
                       lambda: target.exchange_code(other, client, REDIRECT, rfc7636.new_verifier()),
                       judged=False)
        ctx.sc.attempt("reuse the rotated-out refresh token", "refused",
                       lambda: target.refresh(tokens.refresh_token, client), judged=False)
    pepper = ctx.key.decode() if isinstance(ctx.key, bytes) else ctx.key
    secrets = {"raw code": code, "raw code (other)": other, "verifier": verifier or "",
               "other code's verifier": other_verifier,
               "refresh token": tokens.refresh_token, "rotated refresh token": rotated.refresh_token,
               "access token": tokens.access_token, "pepper": pepper}
    lines = captured.lines()
    leaks: list[dict[str, Any]] = []
    # Longest first: one raw code may be a prefix of another, and each must be named for itself.
    # A value shorter than 8 characters (a toy pepper such as "p") would match ordinary words
    # in every line; nothing that short is a secret worth finding, so it is not looked for.
    by_length = sorted(((w, v) for w, v in secrets.items() if v and len(v) >= 8),
                       key=lambda wv: -len(wv[1]))
    for where, line in lines:
        shown = line
        found: list[str] = []
        for what, value in by_length:
            if value in shown:
                shown, found = shown.replace(value, f"<{what}>"), [*found, what]
        if found:
            # The (first) line of a multi-line record that holds a secret, digests shortened.
            hit = next((x for x in shown.splitlines() if any(f"<{w}>" in x for w in found)), shown)
            leaks.append({"where": where, "line": _DIGEST.sub(lambda m: short(m.group(0)), hit)[:300],
                          "secrets": ", ".join(found)})
    ctx.sc.observe(f"lines written: {len(captured.events)} log records, "
                   f"{len(lines) - len(captured.events)} stdout/stderr lines; lines carrying a raw secret",
                   expected="0", observed=len(leaks), ok=not leaks)
    ctx.sc.evidence.extend(leaks or [{"log_records": len(captured.events),
                                      "output_lines": len(lines) - len(captured.events),
                                      "lines_with_raw_secret": 0}])


@check(
    id="replay.audit-trail",
    title="Revocation keeps the family's rows (tombstoned) for audit",
    source="RFC 9700 §4.14.2 (relationship retained); RFC 6819 §5.2.1.1",
    severity="low",
    expected="After a replay, the family's rows are still there, marked dead, and the code still "
             "points at its refresh token: the incident can be reconstructed; nothing is usable.",
    requires={Capability.ROWS, Capability.DIGEST},
)
def audit_trail(ctx: Context) -> None:
    client = ctx.client()
    target, code, first, newest = _exchanged_and_rotated(ctx, client)
    ctx.sc.attempt("replay the spent code", "refused", lambda: target.exchange_code(code, client, REDIRECT),
                   judged=False)
    rows = family_frame(ctx, [first.family_id])
    ctx.sc.observe("rows of the family after the revocation", expected="2 (kept, all consumed)",
                   observed=f"{len(rows)} rows, {int(rows['consumed'].sum()) if len(rows) else 0} consumed",
                   ok=len(rows) == 2 and bool(rows["consumed"].all()), rows=rows)
    row = code_row(ctx, target, code)
    linked = bool(row and row["refresh_token_id"])
    ctx.sc.observe("the code row still links its refresh token", expected="yes",
                   observed="yes" if linked else "no (link lost)", ok=linked)
    ctx.sc.attempt("refresh with the newest token", "refused",
                   lambda: target.refresh(newest.refresh_token, client))
    ctx.sc.evidence.extend(records(rows) or [{"family_rows": 0}])
    ctx.sc.evidence.append({"code_digest": short(target.hash(code)),
                            "refresh_token_id": short(row["refresh_token_id"]) if row else "no row"})
