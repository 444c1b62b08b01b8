"""``harness demo``: a short end-to-end walk on the embedded database, printed as tables."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from harness import rfc7636
from harness.database import connect
from harness.errors import OAuthError
from harness.race import race_threads, seed_codes
from harness.repository import AuthCodeParams, OAuthRepository
from harness.targets import load_target

CLIENT, USER, REDIRECT = "demo-client", "demo-user", "https://client.example/cb"


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="PKCE exchange, rotation, replay and a 16-racer claim")
    parser.add_argument("--target", default=None, help="target name (default HARNESS_TARGET or faithful)")
    parser.add_argument("--pepper", default=None, help="at-rest pepper (default HARNESS_AT_REST_PEPPER)")
    parser.add_argument("--racers", type=int, default=16)
    parser.set_defaults(handler=run)


def _attempt(step: str, expected: str, call: Any) -> dict[str, Any]:
    try:
        call()
        observed = "ok"
    except OAuthError as exc:
        observed = f"{exc.kind}: {exc}"
    return {"step": step, "expected": expected, "observed": observed,
            "as expected": observed.startswith(expected)}


def walk(target: OAuthRepository) -> pd.DataFrame:
    """The happy path and the replay, one row per step."""
    db = target.db
    db.ensure_party(CLIENT, USER)
    verifier = rfc7636.new_verifier()
    target.store_authorization_code(AuthCodeParams(
        code="demo-code", client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope="openid",
        code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256"))
    tokens: dict[str, Any] = {}

    def exchange() -> None:
        tokens["first"] = target.exchange_code("demo-code", CLIENT, REDIRECT, verifier)

    def rotate() -> None:
        tokens["second"] = target.refresh(tokens["first"].refresh_token, CLIENT)

    def family_size() -> int:
        with db.connect() as conn:
            row = conn.execute("SELECT count(*) FROM oauth_refresh_tokens WHERE family_id = %s",
                               (tokens["first"].family_id,)).fetchone()
        return int(row[0]) if row else 0

    rows = [
        _attempt("exchange the code with the right PKCE verifier", "ok", exchange),
        _attempt("rotate the refresh token", "ok", rotate),
        _attempt("present the rotated-out refresh token again", "token_invalid",
                 lambda: target.validate_refresh_token(tokens["first"].refresh_token, CLIENT)),
    ]
    before = family_size()
    rows.append(_attempt("replay the spent code", "validation",
                         lambda: target.exchange_code("demo-code", CLIENT, REDIRECT, verifier)))
    after = family_size()
    rows.append({"step": f"family rows before / after the replay: {before} / {after}",
                 "expected": "0 after", "observed": f"{after} after", "as expected": after == 0})
    rows.append(_attempt("use the newest refresh token of the revoked family", "token_invalid",
                         lambda: target.refresh(tokens["second"].refresh_token, CLIENT)))
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    with connect() as db:
        db.reset()
        target = load_target(args.target, db, pepper=args.pepper)
        print(f"target: {getattr(target, 'name', args.target)}   database: {db!r}\n")
        steps = walk(target)
        print(steps.to_string(index=False), "\n")
        seed_codes(target, "demo", 1)
        report = race_threads(target, racers=args.racers, codes=1, seed="demo")
        ops = report.history.operations()
        ops["duration_us"] = ops["duration_us"].round(0)
        print(f"{args.racers} racers on one code:")
        print(ops[["process", "outcome", "error", "duration_us"]].to_string(index=False), "\n")
        print("single winner:", "holds" if report.winners.valid else "VIOLATED", report.winners.summary)
        print("overlap:", report.overlap.summary)
        ok = bool(steps["as expected"].all()) and report.winners.valid
    return 0 if ok else 1
