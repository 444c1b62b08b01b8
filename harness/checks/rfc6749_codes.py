"""Authorization-code checks (RFC 6749 §4.1.2, §4.1.3, §10.5): single use, expiry, redirect URI, binding."""

from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit, urlunsplit

from harness import rfc7636
from harness.checks import Context, check
from harness.checks._common import REDIRECT, code_row, outcome_row, short, store_code
from harness.clock import ManualClock
from harness.scenario import ScenarioError, force_interleaving
from harness.sut.hooks import StepHook
from harness.targets.capabilities import Capability

#: Step hooks a target may expose inside its claim: the naive control pauses between its SELECT
#: and its UPDATE; the faithful and hardened claims are one step, so they pause right after it.
CLAIM_PAUSE_POINTS = (StepHook.BETWEEN_READ_AND_WRITE, StepHook.AFTER_CLAIM)


@check(
    id="code.single-use",
    title="A code is redeemed at most once, even by a request that arrives mid-claim",
    source="RFC 6749 §4.1.2, §10.5",
    severity="critical",
    expected="A second exchange is refused, sequentially and when it is forced to run while the "
             "first is inside its claim (between its read and its write, if it has both).",
)
def single_use(ctx: Context) -> None:
    first, second = ctx.target(), ctx.target()
    client = ctx.client()
    code = store_code(ctx, first, "sequential", client)
    ctx.sc.attempt("exchange the code", "ok", lambda: first.exchange_code(code, client, REDIRECT))
    ctx.sc.attempt("exchange it again", "refused", lambda: second.exchange_code(code, client, REDIRECT))

    if not ctx.has(Capability.STEP_HOOKS):
        ctx.sc.note("a second exchange forced inside the first's claim",
                    "not applicable: the target has no step hooks (the race checks the concurrent case)")
        return
    code = store_code(ctx, first, "forced", client)
    il = force_interleaving(first, lambda: first.exchange_code(code, client, REDIRECT),
                            CLAIM_PAUSE_POINTS,
                            lambda: second.exchange_code(code, client, REDIRECT), db=ctx.rows)
    if il.paused_at is None:
        # The sequential verdict above stands; only the forced half could not be run.
        ctx.sc.note("a second exchange forced inside the first's claim",
                    "not applicable: the target calls none of the step hooks "
                    f"{', '.join(CLAIM_PAUSE_POINTS)}")
        return
    if not il.happened:
        raise ScenarioError("the forced interleaving did not happen")
    ctx.sc.observe(f"second exchange forced while the first paused at {il.paused_at}",
                   expected="second ran inside the first's claim", observed="yes", ok=True,
                   rows=il.timeline(), judged=False)
    assert il.first is not None and il.second is not None
    wins = int(il.first.ok) + int(il.second.ok)
    ctx.sc.observe("exchanges that obtained tokens", expected="1", observed=wins, ok=wins == 1)
    ctx.sc.evidence.extend([*il.rows(), outcome_row("first", il.first), outcome_row("second", il.second)])


@check(
    id="code.expiry",
    title="A code expires within 10 minutes",
    source="RFC 6749 §4.1.2, §10.5",
    severity="medium",
    expected="Redeemable shortly before 600 s have passed; refused after 601 s (a lifetime of at "
             "most 10 minutes is RECOMMENDED).",
    requires={Capability.CLOCK},
)
def expiry(ctx: Context) -> None:
    clock = ManualClock()
    target, client = ctx.target(clock=clock), ctx.client()
    fresh = store_code(ctx, target, "fresh", client)
    stale = store_code(ctx, target, "stale", client)
    clock.advance(599)
    ctx.sc.attempt("exchange a code 599 s after it was issued", "ok",
                   lambda: target.exchange_code(fresh, client, REDIRECT))
    clock.advance(2)
    ctx.sc.attempt("exchange a code 601 s after it was issued", "refused",
                   lambda: target.exchange_code(stale, client, REDIRECT))


def _wrong_redirects(uri: str) -> dict[str, str]:
    """URIs that differ from ``uri`` and must each be refused, by what makes them differ.

    RFC 9700 §2.1 and §4.1.3 (and RFC 6749 §3.1.2.3 with a registered URI) want *exact* string
    matching, i.e. RFC 3986 §6.2.1 simple string comparison. So every variant below is another
    URI, even those that RFC 3986 §6.2.2–§6.2.3 normalisation would call equivalent (letter case
    of the host, ``%63`` for ``c``, ``:443`` on https): an AS that normalises before comparing
    accepts what its browser and its client may parse differently (RFC 9700 §4.1.1), and one that
    compares a prefix accepts any path below the registered one.
    """
    parts = urlsplit(uri)
    host = parts.hostname or ""
    path = parts.path or "/"
    # The first letter of the path, percent-encoded (``/cb`` → ``/%63b``): the same resource to a
    # normalising server (RFC 3986 §2.3, §6.2.2.2), another string to an exact comparison.
    i = next((n for n, ch in enumerate(path) if ch.isalnum()), None)
    encoded = path if i is None else f"{path[:i]}%{ord(path[i]):02X}{path[i + 1:]}"
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    other_scheme = {"https": "http", "http": "https"}.get(parts.scheme, "https")

    def with_(**kw: str) -> str:
        return urlunsplit(parts._replace(**kw))

    variants = {
        "another host": with_(netloc="attacker.example"),
        "the stored URI plus a path": uri + "/attacker",
        "the stored URI plus a query": uri + "?next=https://attacker.example",
        "the host in upper case": with_(netloc=parts.netloc.replace(host, host.upper())),
        "the path in upper case": with_(path=path.upper()),
        ("the trailing slash removed" if path.endswith("/") else "a trailing slash"):
            with_(path=path[:-1] if path.endswith("/") else path + "/"),
        "a path character percent-encoded": with_(path=encoded),
        "userinfo before the host": with_(netloc=f"user@{parts.netloc}"),
        "a fragment": uri + "#fragment",
        f"scheme {other_scheme} instead of {parts.scheme}": with_(scheme=other_scheme),
    }
    if default_port is not None and parts.port is None:
        variants["the default port written out"] = with_(netloc=f"{parts.netloc}:{default_port}")
    # A variant that happens to equal the stored URI (a path with no letters, …) proves nothing.
    return {what: v for what, v in variants.items() if v != uri}


@check(
    id="code.redirect-mismatch",
    title="A different redirect URI is refused (exact match)",
    source="RFC 6749 §3.1.2, §4.1.3; RFC 9700 §2.1, §4.1.1, §4.1.3; RFC 3986 §6.2.1",
    severity="high",
    expected="Refused unless identical to the stored redirect URI, character for character "
             "(simple string comparison): another host, a longer path or a query, the letter case "
             "of the host or of the path, a trailing slash, a percent-encoded path character, the "
             "default port written out, userinfo, a fragment and another scheme are all refused.",
)
def redirect_mismatch(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i, (what, uri) in enumerate(_wrong_redirects(REDIRECT).items()):
        code = store_code(ctx, target, f"redirect-{i}", client)
        ctx.sc.attempt(f"exchange with {what}", "refused", partial(target.exchange_code, code, client, uri))


@check(
    id="code.redirect-omitted",
    title="The redirect URI may not be omitted when one was stored",
    source="RFC 6749 §4.1.3",
    severity="medium",
    expected="Refused: redirect_uri is REQUIRED at the token endpoint when it was included in the "
             "authorization request.",
)
def redirect_omitted(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "omitted", client)
    ctx.sc.attempt("exchange without redirect_uri", "refused",
                   lambda: target.exchange_code(code, client, None))


@check(
    id="code.client-binding",
    title="A code redeems only for the client it was issued to",
    source="RFC 6749 §4.1.3, §10.5",
    severity="high",
    expected="Another client presenting the code is refused, and the code stays redeemable by "
             "its own client.",
)
def client_binding(ctx: Context) -> None:
    target, victim, other = ctx.target(), ctx.client("victim"), ctx.client("other")
    code = store_code(ctx, target, "bound", victim)
    ctx.sc.attempt("another client exchanges the code", "refused",
                   lambda: target.exchange_code(code, other, REDIRECT))
    ctx.sc.attempt("its own client exchanges it afterwards", "ok",
                   lambda: target.exchange_code(code, victim, REDIRECT))


@check(
    id="code.indistinguishable",
    title="Unknown, spent and expired codes look the same to the caller",
    source="RFC 6749 §5.2 (invalid_grant); RFC 6819 §4.4.1.3 (online guessing)",
    severity="low",
    expected="The same error kind and public message for an unknown, a spent and an expired code, "
             "so probing reveals nothing about which codes exist.",
)
def indistinguishable(ctx: Context) -> None:
    clock = ManualClock()
    target, client = ctx.target(clock=clock), ctx.client()
    spent = store_code(ctx, target, "spent", client)
    ctx.sc.setup("exchange the code that will be spent",
                 lambda: target.exchange_code(spent, client, REDIRECT))
    expired = store_code(ctx, target, "expired", client)
    probes = {
        "unknown code": lambda: target.exchange_code(ctx.name("code-never-issued"), client, REDIRECT),
        "spent code": lambda: target.exchange_code(spent, client, REDIRECT),
    }
    outcomes = {what: ctx.sc.attempt(f"present a {what}" if what[0] == "s" else f"present an {what}",
                                     "refused", fn, judged=False) for what, fn in probes.items()}
    if ctx.has(Capability.CLOCK):
        clock.advance(7200)
        outcomes["expired code (2 h old)"] = ctx.sc.attempt(
            "present an expired code (2 h old)", "refused",
            lambda: target.exchange_code(expired, client, REDIRECT), judged=False)
    else:
        ctx.sc.note("present an expired code", "not applicable: the target's clock cannot be moved")
    answers = {what: (o.kind, o.message) for what, o in outcomes.items()}
    distinct = sorted({f"{k} {m!r}" for k, m in answers.values()})
    ctx.sc.observe("distinct (kind, public message) answers", expected="1", observed=" | ".join(distinct),
                   ok=len(distinct) == 1 and all(not o.ok for o in outcomes.values()))
    ctx.sc.evidence.extend({"probe": what, "kind": k, "public_message": m}
                           for what, (k, m) in answers.items())


@check(
    id="code.failed-redemption",
    title="A failed redemption (wrong verifier) does not burn the code for its legitimate client",
    source="RFC 7636 §1, §4.6; RFC 6749 §4.1.3, §10.5",
    severity="medium",
    expected="An attacker's wrong-verifier attempt is refused and leaves the code unspent; the "
             "legitimate client's later exchange with the right verifier succeeds (otherwise a "
             "stolen code, useless to the thief under PKCE, still denies the user service and the "
             "legitimate exchange looks like a replay).",
)
def failed_redemption(ctx: Context) -> None:
    attacker_side, legit_side = ctx.target(), ctx.target()
    client = ctx.client()
    verifier = rfc7636.new_verifier()
    code = store_code(ctx, legit_side, "stolen", client, verifier=verifier)
    ctx.sc.attempt("the attacker exchanges the intercepted code with a guessed verifier", "refused",
                   lambda: attacker_side.exchange_code(code, client, REDIRECT, rfc7636.new_verifier()))
    rows = ctx.has(Capability.ROWS, Capability.DIGEST)
    spent = False
    if rows:
        row = code_row(ctx, legit_side, code)
        spent = bool(row and row["used_at"] is not None)
        ctx.sc.observe("the code's used_at after the failed attempt", expected="NULL (still unspent)",
                       observed="set (spent)" if spent else "NULL", ok=not spent)
    ctx.sc.attempt("the legitimate client exchanges it with the right verifier", "ok",
                   lambda: legit_side.exchange_code(code, client, REDIRECT, verifier))
    if rows:
        ctx.sc.evidence.append({"code_digest": short(legit_side.hash(code)),
                                "used_at_after_attack": "set" if spent else "NULL"})
    ctx.sc.evidence.extend({"step": s.action, "expected": s.expected, "observed": s.observed, "ok": s.ok}
                           for s in ctx.sc.steps if s.judged)
