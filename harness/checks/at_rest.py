"""At-rest checks: no raw secret in any column, digests that reproduce, pepper change, missing pepper."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from harness.checks import Context, check
from harness.checks._common import REDIRECT, SCOPE, pkce_exchange, short, store_code
from harness.repository import AuthCodeParams
from harness.sut.faithful import OAuthRepository
from harness.sut.tokens import Tokens
from harness.targets.capabilities import Capability


def _flow(ctx: Context, target: OAuthRepository) -> tuple[str, str | None, Tokens, Tokens]:
    client = ctx.client()
    code, verifier, first = pkce_exchange(ctx, target, client, "at-rest")
    second: Tokens = ctx.sc.setup("rotate the refresh token",
                                  lambda: target.refresh(first.refresh_token, client))
    return code, verifier, first, second


def _stdlib_digest(pepper: str | bytes, value: str) -> str:
    """The at-rest digest recomputed with nothing but the standard library (not the harness's code)."""
    key = pepper.encode() if isinstance(pepper, str) else pepper
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


@check(
    id="at-rest.no-raw-secrets",
    title="No raw code, token or verifier in any column",
    source="RFC 6819 §5.1.4.1.3, §5.2.2.3 (store hashes); RFC 6749 §10.3, §10.5",
    severity="high",
    expected="After an exchange and a rotation, no column of any table contains the raw code, the "
             "verifier, a refresh token or an access token: a database read yields nothing usable.",
    requires={Capability.ROWS, Capability.DIGEST},
)
def no_raw_secrets(ctx: Context) -> None:
    target = ctx.target()
    code, verifier, first, second = _flow(ctx, target)
    secrets = {"code": code, "verifier": verifier or "", "refresh token #1": first.refresh_token,
               "refresh token #2": second.refresh_token, "access token #1": first.access_token,
               "access token #2": second.access_token}
    found: list[dict[str, Any]] = []
    with ctx.rows.connect() as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' ORDER BY 1")]
        for table in tables:
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s ORDER BY ordinal_position", (table,))]
            for what, value in secrets.items():
                for col in cols if value else []:
                    sql = f'SELECT count(*) FROM "{table}" WHERE strpos("{col}"::text, %s) > 0'
                    row = conn.execute(sql.encode(), (value,)).fetchone()
                    if row and row[0]:
                        found.append({"table": table, "column": col, "secret": what, "rows": int(row[0])})
    ctx.sc.observe(f"columns scanned in {len(tables)} tables; columns holding a raw secret",
                   expected="none", observed=", ".join(f"{f['table']}.{f['column']} ({f['secret']})"
                                                      for f in found) or "none", ok=not found)
    ctx.sc.evidence.extend(found or [{"tables_scanned": len(tables), "raw_secrets_found": 0}])


@check(
    id="at-rest.digest",
    title="Stored identifiers are HMAC-SHA-256 digests that reproduce independently",
    source="RFC 6819 §5.1.4.1.3; the seed's hash_at_rest",
    severity="medium",
    expected="oauth_auth_codes.code, oauth_refresh_tokens.token_id, the code's refresh_token_id "
             "link and a new family's family_id equal HMAC-SHA-256(pepper, raw value) in lowercase "
             "hex, recomputed here with Python's stdlib hmac.",
    requires={Capability.ROWS, Capability.DIGEST},
)
def digest(ctx: Context) -> None:
    target = ctx.target()
    code, _verifier, first, second = _flow(ctx, target)
    want = {name: _stdlib_digest(ctx.key, raw) for name, raw in
            (("code", code), ("rt1", first.refresh_token), ("rt2", second.refresh_token))}
    with ctx.rows.connect() as conn:
        code_row = conn.execute("SELECT code, refresh_token_id FROM oauth_auth_codes WHERE code = %s",
                                (want["code"],)).fetchone()
        tokens = {r[0]: r[1] for r in conn.execute(
            "SELECT token_id, family_id FROM oauth_refresh_tokens WHERE token_id = ANY(%s)",
            ([want["rt1"], want["rt2"]],))}
    checks = [
        ("oauth_auth_codes.code = HMAC(code)", "code", code_row is not None),
        ("oauth_auth_codes.refresh_token_id = HMAC(refresh token #1)", "rt1",
         code_row is not None and code_row[1] == want["rt1"]),
        ("oauth_refresh_tokens.token_id = HMAC(refresh token #1)", "rt1", want["rt1"] in tokens),
        ("oauth_refresh_tokens.token_id = HMAC(refresh token #2)", "rt2", want["rt2"] in tokens),
        ("family_id of the new family = HMAC(refresh token #1)", "rt1",
         tokens.get(want["rt1"]) == want["rt1"]),
        ("the rotated token stays in that family", "rt1", tokens.get(want["rt2"]) == want["rt1"]),
    ]
    for what, _key, ok in checks:
        ctx.sc.observe(what, expected="yes", observed="yes" if ok else "no", ok=ok)
    ctx.sc.evidence.extend({"column": what, "expected_digest": short(want[key]), "reproduces": ok}
                           for what, key, ok in checks)


@check(
    id="at-rest.pepper",
    title="The pepper is required and keys every digest",
    source="RFC 6819 §5.1.4.1.3; the seed's hash_at_rest (missing pepper = internal error)",
    severity="high",
    expected="Without a pepper nothing is stored (an internal error, no row written); under another "
             "pepper the digest differs and the code is refused as invalid, writing nothing, while "
             "the original deployment can still redeem it.",
    requires={Capability.ROWS, Capability.DIGEST, Capability.OPTIONS},
)
def pepper(ctx: Context) -> None:
    client = ctx.client()
    unpeppered = ctx.target(pepper="")
    code = ctx.name("code-unpeppered")
    params = AuthCodeParams(code=code, client_id=client, user_id=ctx.user, redirect_uri=REDIRECT,
                            scope=SCOPE)
    out = ctx.sc.attempt("store a code with no pepper configured", "refused",
                         lambda: unpeppered.store_authorization_code(params))
    with ctx.rows.connect() as conn:
        row = conn.execute("SELECT count(*) FROM oauth_auth_codes WHERE client_id = %s", (client,)).fetchone()
    written = int(row[0]) if row else 0
    ctx.sc.observe("rows written for that client", expected="0", observed=written, ok=written == 0)
    ctx.sc.evidence.append({"missing_pepper": out.describe(), "rows_written": written})

    base = ctx.key.decode() if isinstance(ctx.key, bytes) else ctx.key
    original, rotated = ctx.target(), ctx.target(pepper=base + "-rotated")
    code = store_code(ctx, original, "peppered", client)
    a, b = original.hash(code), rotated.hash(code)
    ctx.sc.observe("digest of the same code under two peppers", expected="different",
                   observed=f"{short(a)} vs {short(b)}", ok=a != b)
    refused = ctx.sc.attempt("redeem it under the other pepper", "refused",
                             lambda: rotated.exchange_code(code, client, REDIRECT))
    ctx.sc.observe("kind of that refusal", expected="validation (invalid code), not internal",
                   observed=refused.kind, ok=refused.kind == "validation")
    ctx.sc.attempt("redeem it under the original pepper", "ok",
                   lambda: original.exchange_code(code, client, REDIRECT))
    ctx.sc.evidence.append({"digest_original": short(a), "digest_other_pepper": short(b),
                            "other_pepper": refused.describe()})
