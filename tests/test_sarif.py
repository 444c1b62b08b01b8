"""``harness scan --format sarif``: valid SARIF 2.1.0 by the OASIS schema, and what it says.

The schema is vendored (tests/data/sarif-schema-2.1.0.json, see tests/data/README.md), so the
validation runs offline; a broken document must fail it, so the validator is no rubber stamp.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extra; tests only
import pytest

from harness.baseline import Baseline, compare
from harness.checks import CATALOGUE, SHIPPED_TARGETS, CheckResult, Verdict
from harness.checks.expected import expected_violations
from harness.database import Database
from harness.report import SARIF_LEVELS, first_failure, rfc_links, rule_name, to_sarif
from harness.scenario import Step

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "sarif-schema-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def errors(validator: jsonschema.protocols.Validator, doc: Doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_vendored_schema_is_the_oasis_one_unmodified() -> None:
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")


# -- hand-made results: every verdict, with and without a baseline ---------------------------


def result(check_id: str, verdict: Verdict, ok: bool = True, target: str = "faithful",
           evidence: list[dict[str, Any]] | None = None) -> CheckResult:
    steps = [Step("exchange it", "refused", "refused" if ok else "ok", ok)]
    return CheckResult(CATALOGUE[check_id], target, verdict, evidence or [], steps)


def hand_made() -> list[CheckResult]:
    return [result("pkce.plain", "violated", ok=False),
            result("code.expiry", "holds"),
            result("race.single-winner", "inconclusive", evidence=[{"reason": "one request at a time"}]),
            result("code.single-use", "not_applicable", evidence=[{"reason": "needs step hooks"}]),
            result("at-rest.pepper", "error", evidence=[{"reason": "RuntimeError at x.py:1"}])]


def test_every_verdict_maps_to_valid_sarif(validator: jsonschema.protocols.Validator) -> None:
    doc = json.loads(to_sarif(hand_made(), command="harness scan --target faithful --format sarif"))
    assert errors(validator, doc) == []
    [run] = doc["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(CATALOGUE)
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert set(by_rule) == {"pkce.plain", "race.single-winner"}  # holds, n/a and error are no results
    plain = by_rule["pkce.plain"]
    assert (plain["kind"], plain["level"]) == ("fail", "note")  # low severity
    assert plain["message"]["text"] == "exchange it: expected refused, observed ok"
    assert rules[plain["ruleIndex"]]["id"] == "pkce.plain"
    assert (by_rule["race.single-winner"]["kind"], by_rule["race.single-winner"]["level"]) == ("open", "none")
    [invocation] = run["invocations"]
    assert invocation["executionSuccessful"] is False  # a check could not run
    notes = {n["associatedRule"]["id"]: n for n in invocation["toolExecutionNotifications"]}
    assert notes["at-rest.pepper"]["level"] == "error"
    assert "RuntimeError" in notes["at-rest.pepper"]["message"]["text"]
    assert notes["code.single-use"]["level"] == "note"
    assert "baselineState" not in plain


def test_a_baseline_sets_baseline_state(validator: jsonschema.protocols.Validator) -> None:
    before = [result("pkce.plain", "violated", ok=False), result("code.client-binding", "violated", ok=False),
              result("code.expiry", "holds")]
    after = [result("pkce.plain", "violated", ok=False), result("code.client-binding", "holds"),
             result("code.expiry", "violated", ok=False)]
    comparison = compare(Baseline.from_results(before), after)
    doc = json.loads(to_sarif(after, comparison=comparison))
    assert errors(validator, doc) == []
    states = {(r["ruleId"], r["baselineState"], r["kind"]) for r in doc["runs"][0]["results"]}
    assert states == {("pkce.plain", "unchanged", "fail"), ("code.expiry", "new", "fail"),
                      ("code.client-binding", "absent", "pass")}


def test_rules_describe_each_check_and_link_its_rfc_text() -> None:
    doc = json.loads(to_sarif([result("pkce.plain", "violated", ok=False)]))
    rules = {r["id"]: r for r in doc["runs"][0]["tool"]["driver"]["rules"]}
    for check_id, spec in CATALOGUE.items():
        rule = rules[check_id]
        assert rule["name"] == rule_name(check_id) and rule["name"].isalnum()
        assert rule["shortDescription"]["text"] == spec.title
        assert rule["fullDescription"]["text"] == spec.expected
        assert rule["defaultConfiguration"]["level"] == SARIF_LEVELS[spec.severity]
        assert rule["properties"]["source"] == spec.source
        assert rule["properties"]["severity"] == spec.severity
        assert rule["properties"]["tags"] == ["security", spec.theme]
        url = urlparse(rule["helpUri"])  # every check cites an RFC section
        assert url.scheme == "https" and url.netloc == "www.rfc-editor.org" and url.fragment
        assert spec.source in rule["help"]["text"]
    assert rule_name("pkce.appendix-b") == "PkceAppendixB"
    assert rfc_links("RFC 7636 §4.2, Appendix B; RFC 9700 §2.1.1") == [
        ("RFC 7636 §4.2", "https://www.rfc-editor.org/rfc/rfc7636#section-4.2"),
        ("RFC 7636 Appendix B", "https://www.rfc-editor.org/rfc/rfc7636#appendix-B"),
        ("RFC 9700 §2.1.1", "https://www.rfc-editor.org/rfc/rfc9700#section-2.1.1")]
    # A parenthesised gloss is not a section; a reference without an RFC is no link.
    assert rfc_links("RFC 6749 §5.2 (invalid_grant); the seed's hash_at_rest") == [
        ("RFC 6749 §5.2", "https://www.rfc-editor.org/rfc/rfc6749#section-5.2")]


# -- the validator is not a rubber stamp ------------------------------------------------------


def _drop(key: str) -> Callable[[Doc], None]:
    return lambda d: d.pop(key)


BREAKAGES: dict[str, Callable[[Doc], None]] = {
    "no version": _drop("version"),
    "SARIF 2.0.0": lambda d: d.update(version="2.0.0"),
    "runs is an object": lambda d: d.update(runs={"run": d["runs"][0]}),
    "an unknown top-level property": lambda d: d.update(findings=[]),
    "a rule without an id": lambda d: d["runs"][0]["tool"]["driver"]["rules"][0].pop("id"),
    "a tool without a driver": lambda d: d["runs"][0]["tool"].pop("driver"),
    "level fatal": lambda d: d["runs"][0]["results"][0].update(level="fatal"),
    "kind broken": lambda d: d["runs"][0]["results"][0].update(kind="broken"),
    "a message without text or id": lambda d: d["runs"][0]["results"][0].update(message={}),
    "a negative rule index": lambda d: d["runs"][0]["results"][0].update(ruleIndex=-2),
    "baselineState gone": lambda d: d["runs"][0]["results"][0].update(baselineState="gone"),
    "an invocation without executionSuccessful":
        lambda d: d["runs"][0]["invocations"][0].pop("executionSuccessful"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_document_fails_validation(validator: jsonschema.protocols.Validator, breakage: str) -> None:
    good = json.loads(to_sarif(hand_made()))
    assert errors(validator, good) == []  # the control: unbroken, it passes
    bad = copy.deepcopy(good)
    BREAKAGES[breakage](bad)
    assert errors(validator, bad), f"{breakage}: the schema accepted it"


# -- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_targets_sarif(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Doc:
    path = tmp_path_factory.mktemp("sarif") / "scan.sarif"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET")}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="cli-pepper")
    out = subprocess.run([sys.executable, "-m", "harness", "scan", "--all-targets", "--format", "sarif",
                          "--output", str(path)], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 1, out.stderr  # the seed's gaps and the negative control
    assert out.stdout == "" and f"wrote {path}" in out.stderr
    doc: Doc = json.loads(path.read_text())
    return doc


def test_scan_all_targets_sarif_is_valid(validator: jsonschema.protocols.Validator,
                                         all_targets_sarif: Doc) -> None:
    assert errors(validator, all_targets_sarif) == []
    assert all_targets_sarif["version"] == "2.1.0"


def test_scan_all_targets_sarif_reports_each_targets_violations(all_targets_sarif: Doc) -> None:
    runs = all_targets_sarif["runs"]
    assert [r["properties"]["target"] for r in runs] == list(SHIPPED_TARGETS)
    ids = [r["automationDetails"]["id"] for r in runs]
    assert len(set(ids)) == len(ids)  # one category per target
    for run, target in zip(runs, SHIPPED_TARGETS, strict=True):
        rules = run["tool"]["driver"]["rules"]
        assert [r["id"] for r in rules] == list(CATALOGUE)
        results = run["results"]
        assert {r["ruleId"] for r in results} == expected_violations(target)
        assert len(results) == len(expected_violations(target))  # one result per violated check
        for r in results:
            spec = CATALOGUE[r["ruleId"]]
            assert r["kind"] == "fail" and r["level"] == SARIF_LEVELS[spec.severity]
            assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
            assert ": expected " in r["message"]["text"] and ", observed " in r["message"]["text"]
            assert r["locations"][0]["logicalLocations"][0]["name"] == target
        assert run["invocations"][0]["executionSuccessful"] is True


def test_the_message_is_the_first_failing_step() -> None:
    r = CheckResult(CATALOGUE["code.client-binding"], "faithful", "violated", [],
                    [Step("setup", "ok", "ok", True, judged=False),
                     Step("another client exchanges the code", "refused", "ok", False),
                     Step("its own client exchanges it afterwards", "ok", "refused", False)])
    doc = json.loads(to_sarif([r]))
    assert doc["runs"][0]["results"][0]["message"]["text"] == first_failure(r) == \
        "another client exchanges the code: expected refused, observed ok"
    assert doc["runs"][0]["results"][0]["level"] == "error"  # high
