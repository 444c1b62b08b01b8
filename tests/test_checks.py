"""The check catalogue on every shipped target: each verdict asserted, each forced interleaving shown."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from harness.checks import (
    CATALOGUE,
    SEVERITIES,
    SHIPPED_TARGETS,
    CheckResult,
    findings_table,
    run_check,
    scan,
    select,
)
from harness.checks.expected import FAITHFUL_FINDINGS, NAIVE_HOLDS, expected_verdict
from harness.database import Database
from harness.errors import SetupError
from harness.repository import OAuthRepository
from harness.scenario import Scenario, ScenarioError
from harness.scope import RunScope

#: The verdict table the shipped targets are held to, as data: check id → (faithful, hardened, naive).
#: Written out here rather than derived, so a change to harness.checks.expected is a visible diff.
V, H = "violated", "holds"
EXPECTED: dict[str, tuple[str, str, str]] = {
    "pkce.appendix-b": (H, H, V),
    "pkce.right-verifier": (H, H, V),
    "pkce.wrong-verifier": (H, H, V),
    "pkce.missing-verifier": (H, H, V),
    "pkce.plain": (V, H, V),
    "pkce.downgrade": (V, H, V),
    "pkce.verifier-syntax": (V, H, H),
    "pkce.constant-time": (H, H, V),
    "code.single-use": (H, H, V),
    "code.expiry": (H, H, V),
    "code.redirect-mismatch": (H, H, V),
    "code.redirect-omitted": (V, H, V),
    "code.client-binding": (V, H, V),
    "code.indistinguishable": (H, H, V),
    "code.failed-redemption": (V, H, V),
    "replay.revokes-family": (H, H, V),
    "replay.between-claim-and-link": (V, H, V),
    "replay.cross-client": (H, H, V),
    "replay.access-tokens": (V, H, V),
    "replay.log-secrets": (V, H, V),
    "replay.audit-trail": (V, H, V),
    "refresh.rotation": (H, H, V),
    "refresh.concurrent": (V, H, V),
    "refresh.expiry": (H, H, V),
    "refresh.client-binding": (H, H, V),
    "refresh.grace-policy": (V, H, V),
    "refresh.grace-cross-client": (H, H, V),
    "token.access-expiry": (H, H, V),
    "token.resource": (H, H, V),
    "token.scope": (H, H, V),
    "at-rest.no-raw-secrets": (H, H, V),
    "at-rest.digest": (H, H, V),
    "at-rest.pepper": (H, H, V),
    "repository.cleanup-expired": (H, H, V),
    "repository.revoke-token": (H, H, V),
    "repository.code-client": (H, H, V),
    "repository.token-family": (H, H, V),
    "repository.token-client": (H, H, V),
    "repository.validate-refresh": (H, H, V),
    "race.single-winner": (H, H, V),
}

#: A raw code or token made by a check (``cc-<check>-<run>-code-…``) and a full 64-hex digest.
RAW_CODE = re.compile(r"cc-[a-z0-9-]+-[0-9a-f]{8}-code-")
FULL_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


def test_the_table_covers_the_catalogue_and_matches_the_expectations() -> None:
    assert list(EXPECTED) == list(CATALOGUE)
    for check_id, verdicts in EXPECTED.items():
        for target, want in zip(SHIPPED_TARGETS, verdicts, strict=True):
            assert expected_verdict(target, check_id) == want, (target, check_id)
    assert {i for i, v in EXPECTED.items() if v[0] == V} == FAITHFUL_FINDINGS
    assert {i for i, v in EXPECTED.items() if v[2] == H} == NAIVE_HOLDS


def test_every_check_is_violated_by_some_shipped_target_and_held_by_hardened() -> None:
    """A check that no target violates is not yet a check."""
    for check_id, verdicts in EXPECTED.items():
        assert V in verdicts, check_id
        assert verdicts[1] == H, check_id


def test_catalogue_entries_are_complete() -> None:
    for spec in CATALOGUE.values():
        assert spec.severity in SEVERITIES
        assert "RFC" in spec.source or "seed" in spec.source, spec.id
        assert spec.title and len(spec.expected) > 20
        assert spec.theme in {"rfc7636_pkce", "rfc6749_codes", "replay_families", "refresh_rotation",
                              "tokens", "at_rest", "repository_methods", "concurrency"}


@pytest.mark.parametrize("target", SHIPPED_TARGETS)
@pytest.mark.parametrize("check_id", list(EXPECTED))
def test_verdict(db: Database, pepper: str, target: str, check_id: str) -> None:
    result = run_check(check_id, db, target, pepper)
    want = EXPECTED[check_id][SHIPPED_TARGETS.index(target)]
    assert result.verdict == want, result.frame().to_string()
    judged = [s for s in result.steps if s.judged]
    assert judged, "a verdict needs at least one judged step"
    if want == V:
        assert any(not s.ok for s in judged)
    else:
        assert all(s.ok for s in judged)
    assert result.evidence
    text = json.dumps(result.as_dict(), default=str)
    assert not RAW_CODE.search(text), "a raw code reached the evidence"
    assert not FULL_DIGEST.search(text), "evidence must show shortened digests"


def _events(result: CheckResult) -> list[str]:
    return [str(row["event"]) for row in result.evidence if "event" in row]


def _order(events: list[str], *prefixes: str) -> list[int]:
    return [next(i for i, e in enumerate(events) if e.startswith(p)) for p in prefixes]


@pytest.mark.parametrize("target,pause", [("faithful", "after_claim"), ("hardened", "after_claim"),
                                          ("naive", "between_read_and_write")])
def test_single_use_interleaving_really_happens(db: Database, pepper: str, target: str, pause: str) -> None:
    events = _events(run_check("code.single-use", db, target, pepper))
    paused, started, resumed, first_done = _order(
        events, f"first paused at {pause}", "second started", "first resumed", "first finished")
    assert paused < started < resumed < first_done
    second_done = _order(events, "second finished")[0]
    if target == "hardened":
        # The second request waited on the first's row lock and finished only after it.
        assert any(e.startswith("second blocked on a row lock") for e in events)
        assert second_done > first_done
    else:
        assert second_done < resumed


@pytest.mark.parametrize("check_id", ["replay.between-claim-and-link", "refresh.concurrent"])
@pytest.mark.parametrize("target", SHIPPED_TARGETS)
def test_replay_and_refresh_interleavings_really_happen(
    db: Database, pepper: str, check_id: str, target: str
) -> None:
    events = _events(run_check(check_id, db, target, pepper))
    paused, started, resumed = _order(events, "first paused at", "second started", "first resumed")
    assert paused < started < resumed
    if check_id == "replay.between-claim-and-link":
        assert events[paused] == "first paused at before_link"
    blocked = any(e.startswith("second blocked on a row lock") for e in events)
    assert blocked == (target == "hardened")


@dataclass
class HooklessRepository(OAuthRepository):
    """A reviewer's target that exposes no step hooks: an interleaving cannot be forced on it."""

    def _step(self, name: str) -> None:
        return None


def make_hookless(db: Database, **kwargs: Any) -> HooklessRepository:
    return HooklessRepository(db, **kwargs)


def test_a_target_without_hooks_is_not_applicable_not_a_pass(db: Database, pepper: str) -> None:
    # A check that is only the forced interleaving cannot run on it: not applicable, not a pass.
    result = run_check("replay.between-claim-and-link", db, "test_checks:make_hookless", pepper)
    assert result.verdict == "not_applicable"
    assert "step hook" in str(result.evidence[0]["reason"])
    # code.single-use judges its sequential half and says the forced half could not be run (as
    # over HTTP, where the race covers the concurrent case).
    result = run_check("code.single-use", db, "test_checks:make_hookless", pepper)
    assert result.verdict == H
    assert any("calls none of the step hooks" in s.observed for s in result.steps if not s.judged)
    # Checks that need no hooks still judge it (it is the faithful port underneath).
    assert run_check("code.client-binding", db, "test_checks:make_hookless", pepper).verdict == V


def test_a_target_that_raises_gives_an_error_verdict_and_the_scan_goes_on(db: Database, pepper: str) -> None:
    results = scan(db, "test_checks:make_exploding", only=["code.expiry", "at-rest.pepper"], pepper=pepper)
    assert [r.verdict for r in results] == ["error", "error"]
    assert "RuntimeError" in str(results[0].evidence[0]["reason"])


class ExplodingRepository(OAuthRepository):
    def store_authorization_code(self, params: Any) -> None:
        raise RuntimeError("boom")


def make_exploding(db: Database, **kwargs: Any) -> ExplodingRepository:
    return ExplodingRepository(db, **kwargs)


def test_scan_refuses_a_missing_pepper_and_unknown_names(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_AT_REST_PEPPER", raising=False)
    with pytest.raises(SetupError, match="pepper"):
        scan(db, "faithful")
    with pytest.raises(SetupError, match="unknown target"):
        scan(db, "nope", pepper="p")
    with pytest.raises(SetupError, match="unknown check"):
        select(["pkce.nope"])
    assert select(["pkce"]) == [i for i in CATALOGUE if i.startswith("pkce.")]
    assert select(["code.expiry", "replay"])[0] == "code.expiry"


def test_cleanup_removes_what_a_check_created(db: Database, pepper: str) -> None:
    def rows() -> int:
        with db.connect() as conn:
            row = conn.execute("SELECT (SELECT count(*) FROM oauth_auth_codes) "
                               "+ (SELECT count(*) FROM oauth_refresh_tokens)").fetchone()
        return int(row[0]) if row else -1

    before = rows()
    run_check("replay.revokes-family", db, "hardened", pepper)
    run_check("race.single-winner", db, "faithful", pepper)
    assert rows() == before  # a check removes its rows when it ends
    run_check("replay.revokes-family", db, "hardened", pepper, keep_rows=True)
    assert rows() > before
    with RunScope(db, "notebook") as scope:  # rows kept to be shown, removed with the scope
        run_check("replay.revokes-family", db, "hardened", pepper, scope=scope)
        kept = rows()
    assert rows() < kept


def test_findings_table_is_check_by_target(db: Database, pepper: str) -> None:
    results = [r for t in SHIPPED_TARGETS for r in scan(db, t, only=["pkce.downgrade", "code.expiry"],
                                                         pepper=pepper)]
    table = findings_table(results, details=False)
    assert list(table.columns) == ["id", *SHIPPED_TARGETS]
    assert table.set_index("id").loc["pkce.downgrade"].tolist() == [V, H, V]
    assert table.set_index("id").loc["code.expiry"].tolist() == [H, H, V]


def test_scenario_verdict_logic() -> None:
    sc = Scenario()
    sc.note("just looking", "something")
    sc.observe("a fact", expected="1", observed=1, ok=True)
    assert not sc.violated
    sc.observe("another", expected="0", observed=2, ok=False, judged=False)
    assert not sc.violated
    sc.attempt("a call that should be refused", "refused", lambda: 42)
    assert sc.violated and sc.steps[-1].observed == "ok"
    with pytest.raises(ScenarioError, match="setup step failed"):
        from harness.errors import ValidationError

        def refuse() -> None:
            raise ValidationError("Invalid authorization code", detail="nope")

        sc.setup("a setup that fails", refuse)


# -- issue 10: the checks added for what a seeded-bug study found unexamined ------------------------

#: The checks issue 10 added (and the one it widened).
ISSUE_10 = ["code.redirect-mismatch", "refresh.grace-cross-client", "token.access-expiry",
            "token.resource", "token.scope", "repository.cleanup-expired", "repository.revoke-token",
            "repository.code-client", "repository.token-family", "repository.token-client",
            "repository.validate-refresh"]


class DuckRepository:
    """A reviewer's own class: the grants and introspection only, on the harness's database and
    clock. No ``hooks``, no ``hash``, no ``validate_refresh_token`` or any other lower method, no
    options: the SQL underneath happens to be the faithful port's."""

    def __init__(self, db: Database, *, pepper: str | bytes | None = None, clock: Any = None) -> None:
        self._inner = OAuthRepository(db, pepper, clock) if clock is not None else OAuthRepository(db, pepper)
        self.db = db
        self.clock = self._inner.clock

    def store_authorization_code(self, params: Any) -> None:
        self._inner.store_authorization_code(params)

    def validate_authorization_code(self, *args: Any) -> Any:
        return self._inner.validate_authorization_code(*args)

    def exchange_code(self, *args: Any) -> Any:
        return self._inner.exchange_code(*args)

    def refresh(self, *args: Any) -> Any:
        return self._inner.refresh(*args)

    def introspect_access_token(self, token: str) -> Any:
        return self._inner.introspect_access_token(token)


class BareRepository(DuckRepository):
    """The same, with neither the harness's database nor its clock: only the grants can be judged."""

    def __init__(self, db: Database, *, pepper: str | bytes | None = None, clock: Any = None) -> None:
        super().__init__(db, pepper=pepper)
        del self.db, self.clock


def make_duck(db: Database, **kwargs: Any) -> DuckRepository:
    return DuckRepository(db, **kwargs)


def make_bare(db: Database, **kwargs: Any) -> BareRepository:
    return BareRepository(db, **kwargs)


@pytest.mark.parametrize(("factory", "expected"), [
    ("test_checks:make_duck", {"code.redirect-mismatch": H, "refresh.grace-cross-client": H,
                               "token.access-expiry": H, "token.scope": H}),
    ("test_checks:make_bare", {"code.redirect-mismatch": H, "refresh.grace-cross-client": H,
                               "token.scope": H}),
])
def test_a_duck_typed_target_gets_verdicts_or_not_applicable_never_error(
        db: Database, pepper: str, factory: str, expected: dict[str, str]) -> None:
    """Without hooks, hash, options or the lower methods, each new check either judges what it can
    (the grants, introspection with the clock) or says which capability it needs, before running."""
    for check_id in ISSUE_10:
        result = run_check(check_id, db, factory, pepper)
        want = expected.get(check_id, "not_applicable")
        assert result.verdict == want, (check_id, result.evidence)
        if want == "not_applicable":
            assert str(result.evidence[0]["reason"]).startswith("needs "), (check_id, result.evidence)
            assert not result.steps  # decided before the check ran: nothing was written


def _foreign_token(db: Database, token_id: str, expires_at: str) -> None:
    """A refresh token of a client the harness did not name (the fixture's ``client-a``)."""
    from harness.testing.plugin import CLIENT, USER

    with db.connect() as conn:
        conn.execute("INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, expires_at, "
                     "family_id) VALUES (%s, %s, %s, 'openid', " + expires_at + ", %s)",
                     (token_id, CLIENT, USER, f"fam-{token_id}"))


def _exists(db: Database, token_id: str) -> bool:
    with db.connect() as conn:
        return conn.execute("SELECT 1 FROM oauth_refresh_tokens WHERE token_id = %s",
                            (token_id,)).fetchone() is not None


def test_the_cleanup_check_refuses_to_run_when_a_foreign_row_is_in_reach(db: Database, pepper: str) -> None:
    """``cleanup_expired_refresh_tokens`` deletes across the table: with a foreign token that
    expired before the check's clock (2001), no target runs it, and the row is still there."""
    _foreign_token(db, "foreign-ancient", "timestamptz '2000-06-01 00:00+00'")
    for target in SHIPPED_TARGETS:
        result = run_check("repository.cleanup-expired", db, target, pepper)
        assert result.verdict == "not_applicable", result.frame().to_string()
        assert "within reach" in str(result.evidence[0]["reason"])
    assert _exists(db, "foreign-ancient")


def test_the_cleanup_check_leaves_foreign_expired_rows_alone(db: Database, pepper: str) -> None:
    """A foreign token that expired yesterday is out of reach of a cleanup at a 2001 clock: the
    shipped targets (naive's age-based bug included) run, and the row survives. A target the harness
    does not know may delete by any predicate, so it is not run beside a row it did not write."""
    _foreign_token(db, "foreign-yesterday", "now() - interval '1 day'")
    for target in SHIPPED_TARGETS:
        result = run_check("repository.cleanup-expired", db, target, pepper)
        assert result.verdict == EXPECTED["repository.cleanup-expired"][SHIPPED_TARGETS.index(target)]
        assert _exists(db, "foreign-yesterday"), target
    result = run_check("repository.cleanup-expired", db, "harness.sut.faithful:make", pepper)
    assert result.verdict == "not_applicable" and "within reach" in str(result.evidence[0]["reason"])
    assert _exists(db, "foreign-yesterday")


def test_redirect_variants_each_differ_from_the_stored_uri() -> None:
    from harness.checks._common import REDIRECT
    from harness.checks.rfc6749_codes import _wrong_redirects

    variants = _wrong_redirects(REDIRECT)
    assert variants == {
        "another host": "https://attacker.example/cb",
        "the stored URI plus a path": "https://client.example/cb/attacker",
        "the stored URI plus a query": "https://client.example/cb?next=https://attacker.example",
        "the host in upper case": "https://CLIENT.EXAMPLE/cb",
        "the path in upper case": "https://client.example/CB",
        "a trailing slash": "https://client.example/cb/",
        "a path character percent-encoded": "https://client.example/%63b",
        "userinfo before the host": "https://user@client.example/cb",
        "a fragment": "https://client.example/cb#fragment",
        "scheme http instead of https": "http://client.example/cb",
        "the default port written out": "https://client.example:443/cb",
    }
    # A URI without letters in its path or an explicit port gets only the variants that differ.
    loopback = _wrong_redirects("http://127.0.0.1:8080/")
    assert "http://127.0.0.1:8080/" not in loopback.values()
    assert loopback["the trailing slash removed"] == "http://127.0.0.1:8080"
