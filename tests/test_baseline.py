"""Scan baselines: ``compare()`` on hand-made results, the file format, and the CLI round trip.

The point of a baseline is masking: ``faithful`` violates twelve checks by design, so a new bug in
one of those checks leaves the verdict ``violated`` and a plain scan cannot see it. The CLI tests
scan one target twice, its code changed in between (``make_reviewed`` below), as a reviewer's own
repository changes between two CI runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.baseline import FORMAT, Baseline, compare, failing_steps, load, normalise, step_identity
from harness.checks import CATALOGUE, CheckResult, CheckSpec, Verdict
from harness.checks.expected import FAITHFUL_FINDINGS
from harness.database import Database
from harness.errors import SetupError
from harness.scenario import Step
from harness.sut.claims import CodeRow
from harness.sut.faithful import OAuthRepository

TESTS = Path(__file__).resolve().parent
HARNESS = [sys.executable, "-m", "harness"]
#: Set in a scan's environment, it gives ``make_reviewed`` the extra bug.
BUG_ENV = "CLAIMCHECK_TEST_PLAIN_BUG"
REVIEWED = "test_baseline:make_reviewed"


# -- the target under review: faithful, then faithful plus one bug ----------------------


@dataclass
class PlainAcceptingRepository(OAuthRepository):
    """faithful, whose code validation also redeems a ``plain`` challenge with verifier = challenge.

    faithful already violates ``pkce.plain`` (it *stores* a plain challenge); redeeming it is a new
    bug inside that violated check: its step "exchange it with verifier = challenge" now fails.
    """

    def _verify_pkce(self, row: CodeRow, code_verifier: str | None) -> None:
        if row.code_challenge_method == "plain" and code_verifier == row.code_challenge:
            return
        super()._verify_pkce(row, code_verifier)


def make_plain_accepting(db: Database, **kwargs: Any) -> PlainAcceptingRepository:
    return PlainAcceptingRepository(db, **kwargs)


class ExplodingRepository(OAuthRepository):
    """A target every check errors on: nothing it shows may be accepted into a baseline."""

    def store_authorization_code(self, params: Any) -> None:
        raise RuntimeError("boom")


def make_exploding(db: Database, **kwargs: Any) -> ExplodingRepository:
    return ExplodingRepository(db, **kwargs)


def make_reviewed(db: Database, **kwargs: Any) -> OAuthRepository:
    """One target name, two versions of its code: faithful, or (``BUG_ENV`` set) the buggy one."""
    if os.environ.get(BUG_ENV):
        return PlainAcceptingRepository(db, **kwargs)
    return OAuthRepository(db, **kwargs)


# -- hand-made results ----------------------------------------------------------------------


def spec(check_id: str, severity: str = "high") -> CheckSpec:
    return CheckSpec(id=check_id, title=f"title of {check_id}", source="RFC 6749 §4.1.3",
                     severity=severity, expected="as the RFC says", theme=check_id.split(".")[0])


def result(check_id: str, verdict: Verdict, *steps: tuple[str, bool], target: str = "t",
           evidence: list[dict[str, Any]] | None = None) -> CheckResult:
    """A result whose judged steps are ``(action, ok)``; a setup step comes first, as in real checks."""
    made = [Step("store a code for cc-1a2b3c4d-5e6f7a-x-client-a", "ok", "ok", True, judged=False)]
    made += [Step(action, "refused", "refused" if ok else "ok", ok) for action, ok in steps]
    return CheckResult(spec(check_id), target, verdict, evidence or [], made)


PLAIN_STORE = "store a code with code_challenge_method=plain"
PLAIN_EXCHANGE = "exchange it with verifier = challenge"


def base_results() -> list[CheckResult]:
    return [result("pkce.plain", "violated", (PLAIN_STORE, False), (PLAIN_EXCHANGE, True)),
            result("code.expiry", "holds", ("exchange a code 601 s after it was issued", True)),
            result("code.client-binding", "violated", ("another client exchanges the code", False))]


def test_the_same_findings_compare_clean() -> None:
    base = Baseline.from_results(base_results())
    comparison = compare(base, base_results())
    assert comparison.new == [] and comparison.fixed == []
    assert comparison.exit_status == 0
    assert {c.check for c in comparison.of("accepted")} == {"pkce.plain", "code.client-binding"}
    assert comparison.summary() == "0 new, 2 accepted"


def test_a_newly_violated_check_is_new() -> None:
    base = Baseline.from_results(base_results())
    now = base_results()
    now[1] = result("code.expiry", "violated", ("exchange a code 601 s after it was issued", False))
    comparison = compare(base, now)
    [new] = comparison.new
    assert (new.kind, new.check, new.steps) == ("new_violation", "code.expiry",
                                               ("exchange a code 601 s after it was issued",))
    assert new.detail.startswith("was holds")
    assert comparison.exit_status == 1


def test_a_new_failing_step_inside_an_already_violated_check_is_new() -> None:
    """The masking case: pkce.plain was violated and still is, but one more of its steps fails."""
    base = Baseline.from_results(base_results())
    now = base_results()
    now[0] = result("pkce.plain", "violated", (PLAIN_STORE, False), (PLAIN_EXCHANGE, False))
    assert [r.verdict for r in now] == [r.verdict for r in base_results()]  # a plain scan sees nothing
    comparison = compare(base, now)
    [new] = comparison.new
    assert (new.kind, new.check, new.steps) == ("new_failing_step", "pkce.plain", (PLAIN_EXCHANGE,))
    assert new.detail == "expected refused, observed ok"
    assert comparison.exit_status == 1
    assert comparison.state_of("t", "pkce.plain") == "updated"
    assert "pkce.plain" not in {c.check for c in comparison.of("accepted")}


def test_a_fixed_finding_is_listed_as_good_news_and_exits_0() -> None:
    base = Baseline.from_results(base_results())
    now = base_results()
    now[2] = result("code.client-binding", "holds", ("another client exchanges the code", True))
    now[0] = result("pkce.plain", "violated", (PLAIN_STORE, True), (PLAIN_EXCHANGE, False))
    comparison = compare(base, now)
    kinds = {(c.kind, c.check, c.steps) for c in comparison.changes}
    assert ("fixed", "code.client-binding", ("another client exchanges the code",)) in kinds
    assert ("fixed_step", "pkce.plain", (PLAIN_STORE,)) in kinds
    # ... and the same check's other step failing now is still news:
    assert [(c.kind, c.steps) for c in comparison.new] == [("new_failing_step", (PLAIN_EXCHANGE,))]

    holds = result("code.client-binding", "holds", ("another client exchanges the code", True))
    only_fixed = compare(base, [*base_results()[:2], holds])
    assert [c.check for c in only_fixed.fixed] == ["code.client-binding"]
    assert only_fixed.exit_status == 0
    assert any(line.startswith("FIXED") and "code.client-binding" in line for line in only_fixed.lines())


def test_errors_new_and_accepted() -> None:
    reason = [{"reason": "setup step failed: store a code"}]
    base = Baseline.from_results([*base_results(), result("code.single-use", "error", evidence=reason)])
    now = base_results()
    now[0] = result("pkce.plain", "error", evidence=reason)
    now.append(result("code.single-use", "error", evidence=reason))
    comparison = compare(base, now)
    [new] = comparison.new
    assert (new.kind, new.check) == ("new_error", "pkce.plain")
    assert "its accepted findings are not seen" in new.detail  # it was violated: now nothing is seen
    assert any(c.kind == "accepted" and c.check == "code.single-use" for c in comparison.changes)


def test_an_unjudged_finding_and_a_changed_observation_do_not_fail() -> None:
    base = Baseline.from_results(base_results())
    now = base_results()
    now[0] = result("pkce.plain", "not_applicable", evidence=[{"reason": "needs rows"}])
    changed = CheckResult(spec("code.client-binding"), "t", "violated", [],
                          [Step("another client exchanges the code", "refused", "ok twice", False)])
    comparison = compare(base, [*now[:2], changed])
    assert comparison.exit_status == 0
    # The changed check is still accepted: its failing step is the baseline's, observed differently.
    assert {c.kind for c in comparison.changes} == {"unjudged", "changed", "accepted"}


def test_a_target_or_check_missing_from_the_baseline_is_new() -> None:
    base = Baseline.from_results(base_results(),
                                 catalogue=["pkce.plain", "code.expiry", "code.client-binding"])
    other = [result("pkce.plain", "violated", (PLAIN_STORE, False), target="other"),
             result("replay.audit-trail", "violated", ("rows kept", False))]
    comparison = compare(base, other)
    assert [c.kind for c in comparison.new] == ["new_violation", "new_violation"]
    assert "not in the baseline's catalogue" in comparison.new[1].detail
    assert any("target other is not in the baseline" in text for _, text in comparison.notes)
    # Checks the baseline holds but the scan did not run (--only) are not compared: no "fixed".
    assert compare(base, base_results()[:1]).changes[0].kind == "accepted"


def test_json_gives_each_target_its_own_comparison() -> None:
    from harness.report import to_json, to_table

    before = [*base_results(), *(replace(r, target="u") for r in base_results())]
    now = [*base_results(), *(replace(r, target="u") for r in base_results())]
    now[3] = result("pkce.plain", "violated", (PLAIN_STORE, False), (PLAIN_EXCHANGE, False), target="u")
    comparison = compare(Baseline.from_results(before), now, source="b.json")
    objects = json.loads(to_json(now, as_list=True, comparison=comparison))
    assert [o["target"] for o in objects] == ["t", "u"]
    assert [o["baseline"]["exit_status"] for o in objects] == [0, 1]
    assert objects[1]["baseline"]["new"][0]["steps"] == [PLAIN_EXCHANGE]
    table = to_table(now, comparison)
    assert "baseline comparison with b.json: 1 new, 3 accepted" in table
    assert "NEW      u          pkce.plain  new failing step: exchange it with verifier = challenge" in table


# -- step identity ---------------------------------------------------------------------------


def test_step_identities_drop_run_ids_and_measured_counts() -> None:
    assert step_identity("exchange for cc-1a2b3c4d-5e6f7a-pkce-plain-client-a") == \
        "exchange for cc-*-pkce-plain-client-a"
    assert step_identity("exchange for cc-0badc0de-aa11bb-x-client-a") == \
        step_identity("exchange for cc-12345678-ffffff-x-client-a")
    assert step_identity("log lines emitted: 4; lines carrying a raw secret") == \
        step_identity("log lines emitted: 3; lines carrying a raw secret") == \
        "log lines emitted: N; lines carrying a raw secret"
    assert step_identity("find_refresh_token_family(x) = 982e449c…") == \
        step_identity("find_refresh_token_family(x) = 77a0faa7…") == "find_refresh_token_family(x) = <value>…"
    assert normalise("another value ('" + "ab12" * 16 + "')") == "another value ('<digest>')"
    # Numbers that *are* the question stay: these are two different steps.
    assert step_identity("exchange with a matching verifier of 42 characters (too short)") != \
        step_identity("exchange with a matching verifier of 129 characters (too long)")


def test_repeated_actions_are_numbered_in_order() -> None:
    r = result("x.y", "violated", ("refresh", True), ("refresh", False))
    assert list(failing_steps(r)) == ["refresh [2]"]


def test_real_catalogue_actions_are_stable_across_runs(db: Database, pepper: str) -> None:
    """Two scans of faithful give the same identities (run ids and names differ between them)."""
    from harness.checks import scan

    first, second = (Baseline.from_results(scan(db, "faithful", pepper=pepper)) for _ in range(2))
    assert first.dumps() == second.dumps()
    assert {c for c, e in first.targets["faithful"].items() if e.verdict == "violated"} == FAITHFUL_FINDINGS
    assert "cc-" not in first.dumps()


# -- the file ---------------------------------------------------------------------------------


def test_the_file_is_sorted_json_that_round_trips(tmp_path: Path) -> None:
    base = Baseline.from_results(base_results())
    text = base.dumps()
    data = json.loads(text)
    assert data["format"] == FORMAT and data["harness_version"]
    assert data["catalogue"] == sorted(CATALOGUE)
    assert list(data["targets"]["t"]) == sorted(data["targets"]["t"])
    assert data["targets"]["t"]["pkce.plain"] == {
        "verdict": "violated",
        "failing_steps": [{"step": PLAIN_STORE, "expected": "refused", "observed": "ok"}]}
    path = tmp_path / "b.json"
    path.write_text(text)
    assert load(path).dumps() == text


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("{not json", "not JSON (line 1"),
    ("[]", "not a JSON object"),
    ('{"format": "claimcheck-baseline/0", "targets": {}}', "format is 'claimcheck-baseline/0'"),
    (json.dumps({"format": FORMAT, "targets": {"t": {"pkce.plain": {"verdict": "broken"}}}}),
     "targets.t.pkce.plain: verdict is not one of"),
    (json.dumps({"format": FORMAT, "targets": {"t": {"pkce.plain": {
        "verdict": "violated", "failing_steps": [{"expected": "x"}]}}}}), "an entry without a step"),
])
def test_a_missing_or_malformed_baseline_is_a_setup_error(tmp_path: Path, content: str | None,
                                                          message: str) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SetupError, match=r"baseline .*b\.json") as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- the command line ------------------------------------------------------------------------


def harness_scan(*args: str, url: str, bug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET", BUG_ENV)}
    env.update(HARNESS_DATABASE_URL=url, HARNESS_AT_REST_PEPPER="cli-pepper",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])))
    if bug:
        env[BUG_ENV] = "1"
    return subprocess.run([*HARNESS, "scan", *args], env=env, capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.fixture(scope="module")
def url(database: Database) -> str:
    return database.url


def test_cli_round_trip_on_faithful_exits_0(url: str, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    wrote = harness_scan("--target", "faithful", "--write-baseline", str(path), url=url)
    assert wrote.returncode == 0, wrote.stderr
    assert f"wrote baseline {path}" in wrote.stderr
    data = json.loads(path.read_text())
    violated = {c for c, e in data["targets"]["faithful"].items() if e["verdict"] == "violated"}
    assert violated == FAITHFUL_FINDINGS

    again = harness_scan("--target", "faithful", "--baseline", str(path), url=url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"baseline comparison with {path}: 0 new, {len(FAITHFUL_FINDINGS)} accepted" in again.stdout
    # A rewritten baseline of an unchanged target is byte-identical (it diffs well in git).
    rewritten = tmp_path / "b2.json"
    assert harness_scan("--target", "faithful", "--write-baseline", str(rewritten), url=url).returncode == 0
    assert rewritten.read_text() == path.read_text()


def test_cli_names_a_new_failing_step_inside_an_already_violated_check(url: str, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert harness_scan("--target", REVIEWED, "--write-baseline", str(path), url=url).returncode == 0
    accepted = json.loads(path.read_text())["targets"][REVIEWED]
    assert {c for c, e in accepted.items() if e["verdict"] == "violated"} == FAITHFUL_FINDINGS

    # Without a baseline the new bug is invisible: the same checks violated, the same exit status.
    plain = harness_scan("--target", REVIEWED, "--format", "json", "--only", "pkce", url=url, bug=True)
    assert plain.returncode == 1
    assert {c["id"] for c in json.loads(plain.stdout)["checks"] if c["verdict"] == "violated"} == \
        {i for i in FAITHFUL_FINDINGS if i.startswith("pkce.")}

    out = harness_scan("--target", REVIEWED, "--baseline", str(path), url=url, bug=True)
    assert out.returncode == 1, out.stdout + out.stderr
    new = [line for line in out.stdout.splitlines() if line.startswith("NEW")]
    assert len(new) == 1, out.stdout
    assert "pkce.plain" in new[0] and "new failing step: exchange it with verifier = challenge" in new[0]
    assert "expected refused, observed ok" in new[0]

    # --only compares the checks it runs; the baseline's others are left alone (not "fixed").
    as_json = harness_scan("--target", REVIEWED, "--baseline", str(path), "--format", "json",
                           "--only", "pkce", url=url, bug=True)
    assert as_json.returncode == 1
    comparison = json.loads(as_json.stdout)["baseline"]
    assert comparison["status"] == "new findings" and comparison["exit_status"] == 1
    assert [(c["kind"], c["check"], c["steps"]) for c in comparison["new"]] == \
        [("new_failing_step", "pkce.plain", ["exchange it with verifier = challenge"])]
    assert comparison["fixed"] == []

    md = harness_scan("--target", REVIEWED, "--baseline", str(path), "--format", "md", "--only", "pkce.plain",
                      url=url, bug=True)
    assert "## Baseline comparison" in md.stdout and "**new**: new failing step" in md.stdout


def test_cli_bad_baselines_exit_2_in_one_line(url: str, tmp_path: Path) -> None:
    out = harness_scan("--target", "faithful", "--baseline", str(tmp_path / "none.json"), url=url)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"harness: error: baseline {tmp_path / 'none.json'}: "
                                               "no such file (write one with --write-baseline)"]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = harness_scan("--target", "faithful", "--baseline", str(bad), url=url)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "not JSON" in out.stderr and out.stdout == ""
    out = harness_scan("--target", "faithful", "--write-baseline", str(tmp_path / "no" / "b.json"), url=url)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_cli_refuses_to_accept_a_check_that_could_not_run(url: str, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    out = harness_scan("--target", "test_baseline:make_exploding", "--only", "code.expiry",
                       "--write-baseline", str(path), url=url)
    assert out.returncode == 2 and "could not run" in out.stderr
    assert not path.exists()
