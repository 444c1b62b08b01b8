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
    "at-rest.no-raw-secrets": (H, H, V),
    "at-rest.digest": (H, H, V),
    "at-rest.pepper": (H, H, V),
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
                              "at_rest", "concurrency"}


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
    result = run_check("code.single-use", db, "test_checks:make_hookless", pepper)
    assert result.verdict == "not_applicable"
    assert "step hook" in str(result.evidence[0]["reason"])
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
