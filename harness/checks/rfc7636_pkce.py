"""PKCE checks (RFC 7636; RFC 9700 §2.1.1): vector, right/wrong verifiers, downgrade, syntax, timing."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from functools import partial
from typing import Any

from harness import rfc7636
from harness.checks import Context, check
from harness.checks._common import REDIRECT, code_row, short, store_code
from harness.scenario import NotApplicable
from harness.targets.capabilities import Capability


@check(
    id="pkce.appendix-b",
    title="RFC 7636 Appendix B test vector redeems",
    source="RFC 7636 §4.2, Appendix B",
    severity="high",
    expected="A code stored with the Appendix B challenge (E9Melhoa…) redeems with the Appendix B "
             "verifier (dBjftJeZ…): S256 = BASE64URL(SHA-256(verifier)), no padding.",
)
def appendix_b(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "vector", client, challenge=rfc7636.APPENDIX_B_CHALLENGE)
    ctx.sc.attempt("exchange with the Appendix B verifier", "ok",
                   lambda: target.exchange_code(code, client, REDIRECT, rfc7636.APPENDIX_B_VERIFIER))


@check(
    id="pkce.right-verifier",
    title="The right verifier redeems",
    source="RFC 7636 §4.6",
    severity="high",
    expected="A fresh 43-character verifier whose S256 challenge was stored redeems the code.",
)
def right_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i in range(3):
        verifier = rfc7636.new_verifier()
        code = store_code(ctx, target, f"right-{i}", client, verifier=verifier)
        ctx.sc.attempt(f"exchange with its own verifier (#{i + 1})", "ok",
                       partial(target.exchange_code, code, client, REDIRECT, verifier))


@check(
    id="pkce.wrong-verifier",
    title="A wrong verifier, or the public challenge sent as verifier, is refused",
    source="RFC 7636 §4.6; RFC 9700 §2.1.1",
    severity="critical",
    expected="Refused: another well-formed verifier, and the challenge itself (an attacker who saw "
             "the authorization request knows it) sent as the verifier.",
)
def wrong_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i, what in enumerate(("another well-formed verifier",
                              "the challenge itself (read from the front channel)")):
        verifier = rfc7636.new_verifier()
        challenge = rfc7636.s256_challenge(verifier)
        code = store_code(ctx, target, f"wrong-{i}", client, verifier=verifier)
        sent = rfc7636.new_verifier() if i == 0 else challenge
        ctx.sc.attempt(f"exchange with {what}", "refused",
                       partial(target.exchange_code, code, client, REDIRECT, sent))


@check(
    id="pkce.missing-verifier",
    title="A challenge was stored but no verifier is sent",
    source="RFC 7636 §4.6",
    severity="critical",
    expected="Refused: a code bound to a challenge never redeems without a verifier.",
)
def missing_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "no-verifier", client, verifier=rfc7636.new_verifier())
    ctx.sc.attempt("exchange without code_verifier", "refused",
                   lambda: target.exchange_code(code, client, REDIRECT, None))


@check(
    id="pkce.plain",
    title="The `plain` method is refused",
    source="RFC 7636 §4.2, §4.4.1; RFC 9700 §2.1.1",
    severity="low",
    expected="Storing a `plain` challenge is refused (an unsupported transformation is an "
             "invalid_request at the authorization endpoint, RFC 7636 §4.4.1; only S256 keeps the "
             "verifier out of the front channel, RFC 9700 §2.1.1); a verifier equal to the "
             "challenge never redeems.",
)
def plain(ctx: Context) -> None:
    from harness.repository import AuthCodeParams

    target, client = ctx.target(), ctx.client()
    verifier = rfc7636.new_verifier()
    code = ctx.name("code-plain")
    if ctx.remote:
        issued = ctx.sc.attempt("request a code with code_challenge_method=plain", "refused",
                                lambda: target.mint_code(client, challenge=verifier, method="plain"))
        code = issued.value if issued.ok else code
        stored = issued
    else:
        params = AuthCodeParams(code=code, client_id=client, user_id=ctx.user, redirect_uri=REDIRECT,
                                scope="openid", code_challenge=verifier, code_challenge_method="plain")
        stored = ctx.sc.attempt("store a code with code_challenge_method=plain", "refused",
                                lambda: target.store_authorization_code(params))
    if stored.ok:
        out = ctx.sc.attempt("exchange it with verifier = challenge", "refused",
                             lambda: target.exchange_code(code, client, REDIRECT, verifier))
        if ctx.has(Capability.ROWS, Capability.DIGEST):
            row = code_row(ctx, target, code)
            burnt = bool(row and row["used_at"])
            ctx.sc.note("the stored row afterwards",
                        "used_at set: " + ("redeemed with the public challenge as verifier" if out.ok
                                           else "burnt by a request that could never succeed")
                        if burnt else "used_at NULL: the code is still unspent")


@check(
    id="pkce.downgrade",
    title="A verifier sent for a code stored without a challenge (PKCE downgrade)",
    source="RFC 9700 §2.1.1",
    severity="high",
    expected="Refused: a token request with a code_verifier is accepted only if a code_challenge "
             "was present in the authorization request (MUST, RFC 9700 §2.1.1).",
)
def downgrade(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "downgrade", client)
    ctx.sc.attempt("exchange the challenge-less code with a code_verifier", "refused",
                   lambda: target.exchange_code(code, client, REDIRECT, rfc7636.new_verifier()))


#: Verifiers outside RFC 7636 §4.1 (43–128 characters of ALPHA / DIGIT / "-" / "." / "_" / "~").
_BAD_VERIFIERS = {
    "42 characters (too short)": "a" * 42,
    "129 characters (too long)": "b" * 129,
    "a space and a '+' (outside unreserved)": "c" * 41 + " +",
    "non-ASCII characters": "é" * 43,
    "3 characters": "abc",
}


@check(
    id="pkce.verifier-syntax",
    title="Verifier length and charset (43–128 unreserved characters)",
    source="RFC 7636 §4.1",
    severity="low",
    expected="A verifier outside 43–128 unreserved characters is refused even when its S256 "
             "matches the stored challenge (short verifiers are guessable).",
)
def verifier_syntax(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i, (what, verifier) in enumerate(_BAD_VERIFIERS.items()):
        code = store_code(ctx, target, f"syntax-{i}", client, verifier=verifier)
        ctx.sc.attempt(f"exchange with a matching verifier of {what}", "refused",
                       partial(target.exchange_code, code, client, REDIRECT, verifier))


# -- constant-time comparison ----------------------------------------------------

_SECRET_WORDS = ("challenge", "verifier")


def _risky_compares(code: types.CodeType) -> list[dict[str, Any]]:
    """``==`` / ``!=`` between values named like a challenge or verifier in the function's source."""
    try:
        lines, first = inspect.getsourcelines(code)
    except (OSError, TypeError):
        return []
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        names = [ast.unparse(o) for o in operands]
        if any(isinstance(o, ast.Constant) for o in operands):
            continue  # comparing with a literal (e.g. a method name) leaks nothing secret
        if any(w in n.lower() and "method" not in n.lower() for n in names for w in _SECRET_WORDS):
            found.append({"function": code.co_name, "file": code.co_filename.rsplit("/", 1)[-1],
                          "line": first + node.lineno - 1, "comparison": ast.unparse(node)})
    return found


@check(
    id="pkce.constant-time",
    title="The verifier check compares in constant time",
    source="RFC 7636 §4.6; the seed's subtle::ConstantTimeEq",
    severity="low",
    expected="The computed challenge is compared with a constant-time primitive "
             "(hmac.compare_digest / subtle::ConstantTimeEq), never with == on the secret.",
    requires={Capability.IN_PROCESS, Capability.DIGEST},
)
def constant_time(ctx: Context) -> None:
    """Traced, not timed: over a database round trip (~100 µs of jitter on a shared machine) the
    nanoseconds an early-exit ``==`` leaks on a 43-byte string cannot be measured soundly, so the
    check records which comparisons the target really runs while it refuses a wrong verifier:
    ``compare_digest`` calls (profiler ``c_call`` events) and, in the source of every target
    function executed, any ``==``/``!=`` whose operands are named like a challenge or verifier.
    """
    target, client = ctx.target(), ctx.client()
    verifier = rfc7636.new_verifier()
    code = store_code(ctx, target, "ct", client, verifier=verifier)
    packages = {"harness", type(target).__module__.split(".", 1)[0]}
    executed: dict[types.CodeType, None] = {}
    compare_digest_calls = 0

    def profiler(frame: types.FrameType, event: str, arg: Any) -> None:
        nonlocal compare_digest_calls
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.split(".", 1)[0] in packages:
                executed[frame.f_code] = None
        elif event == "c_call" and getattr(arg, "__name__", "") == "compare_digest":
            compare_digest_calls += 1

    wrong = rfc7636.new_verifier()
    sys.setprofile(profiler)
    try:
        ctx.sc.attempt("exchange with a wrong verifier (traced)", "refused",
                       lambda: target.exchange_code(code, client, REDIRECT, wrong))
    finally:
        sys.setprofile(None)
    if not executed:
        raise NotApplicable("no Python function of the target ran: nothing to inspect")
    risky = [r for c in executed for r in _risky_compares(c)]
    ctx.sc.observe("constant-time comparisons called during the refusal", expected="≥ 1",
                   observed=compare_digest_calls, ok=compare_digest_calls >= 1)
    ctx.sc.observe("== / != on a challenge or verifier in the code that ran", expected="none",
                   observed="; ".join(f"{r['file']}:{r['line']} {r['comparison']}" for r in risky)
                   or "none", ok=not risky)
    ctx.sc.evidence.extend([{"compare_digest_calls": compare_digest_calls,
                             "functions_traced": len(executed), "digest": short(target.hash(code))},
                            *risky])
