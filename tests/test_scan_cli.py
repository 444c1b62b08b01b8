"""``harness scan`` as a subprocess: formats, exit statuses, bad targets, an unreachable database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.checks import CATALOGUE, SHIPPED_TARGETS
from harness.checks.expected import FAITHFUL_FINDINGS, expected_violations
from harness.database import Database

HARNESS = [sys.executable, "-m", "harness"]
KEYS = {"id", "title", "source", "severity", "expected", "verdict", "evidence"}


def scan(*args: str, url: str | None, pepper: str | None = "cli-pepper",
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_AT_REST_PEPPER", "HARNESS_TARGET")}
    if url is not None:
        env["HARNESS_DATABASE_URL"] = url
    if pepper is not None:
        env["HARNESS_AT_REST_PEPPER"] = pepper
    return subprocess.run([*HARNESS, "scan", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def url(database: Database) -> str:
    return database.url


def test_hardened_table_exits_0(url: str) -> None:
    out = scan("--target", "hardened", url=url)
    assert out.returncode == 0, out.stderr
    assert "hardened" in out.stdout and "violated" not in out.stdout
    assert f"hardened: {len(CATALOGUE)} holds" in out.stderr


def test_faithful_json_reports_the_seeds_gaps_and_exits_1(url: str) -> None:
    out = scan("--target", "faithful", "--format", "json", url=url)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["target"] == "faithful"
    assert [c["id"] for c in report["checks"]] == list(CATALOGUE)
    for check in report["checks"]:
        assert set(check) >= KEYS
        assert check["verdict"] in ("holds", "violated")
        assert check["evidence"], check["id"]
    assert {c["id"] for c in report["checks"] if c["verdict"] == "violated"} == FAITHFUL_FINDINGS


def test_all_targets_json_is_a_list_of_objects(url: str) -> None:
    out = scan("--all-targets", "--format", "json", "--only", "pkce", "code.client-binding", url=url)
    assert out.returncode == 1, out.stderr
    reports = json.loads(out.stdout)
    assert [r["target"] for r in reports] == list(SHIPPED_TARGETS)
    for r in reports:
        ids = [c["id"] for c in r["checks"]]
        assert ids == [i for i in CATALOGUE if i.startswith("pkce.")] + ["code.client-binding"]
        violated = {c["id"] for c in r["checks"] if c["verdict"] == "violated"}
        assert violated == expected_violations(r["target"]) & set(ids)


def test_junit_output_parses_as_junit(url: str, tmp_path: Path) -> None:
    path = tmp_path / "scan.xml"
    out = scan("--all-targets", "--format", "junit", "--output", str(path), url=url)
    assert out.returncode == 1, out.stderr
    assert out.stdout == "" and f"wrote {path}" in out.stderr
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [f"claimcheck.{t}" for t in SHIPPED_TARGETS]
    for suite, target in zip(suites, SHIPPED_TARGETS, strict=True):
        cases = suite.findall("testcase")
        assert len(cases) == int(suite.get("tests", "-1")) == len(CATALOGUE)
        failed = {c.get("name", "").split(":")[0] for c in cases if c.find("failure") is not None}
        assert failed == expected_violations(target)
        assert int(suite.get("failures", "-1")) == len(failed)
        assert all(c.get("classname", "").startswith(f"claimcheck.{target}.") for c in cases)
        assert all(float(c.get("time", "x")) >= 0 for c in cases)
    assert int(root.get("failures", "-1")) == sum(len(expected_violations(t)) for t in SHIPPED_TARGETS)


def test_markdown_is_a_check_by_target_table(url: str) -> None:
    out = scan("--all-targets", "--format", "md", "--only", "code.expiry", url=url)
    lines = out.stdout.splitlines()
    assert lines[0] == "# Findings: `harness scan`"
    assert "`harness scan --all-targets --format md --only code.expiry`" in lines[2]
    header = lines.index("| id | title | severity | faithful | hardened | naive |")
    row = lines[header + 2]
    assert row.startswith("| `code.expiry` |") and row.endswith("| holds | holds | **violated** |")
    assert "### `code.expiry` on `naive`: violated" in out.stdout


def test_only_a_passing_check_exits_0(url: str) -> None:
    out = scan("--target", "faithful", "--only", "code.expiry", "pkce.appendix-b", url=url)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unknown_target_exits_2_with_the_list(url: str) -> None:
    out = scan("--target", "nope", url=url)
    assert out.returncode == 2
    assert "unknown target 'nope'" in out.stderr and "faithful, hardened, naive" in out.stderr
    out = scan("--target", "harness.nothing_here:make", url=url)
    assert out.returncode == 2 and "cannot import" in out.stderr


def test_usage_errors_exit_2(url: str, tmp_path: Path) -> None:
    assert scan("--only", "pkce.nope", url=url).returncode == 2
    out = scan("--target", "faithful", url=url, pepper=None)
    assert out.returncode == 2 and "pepper" in out.stderr
    out = scan("--output", str(tmp_path / "missing" / "x.json"), url=url)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = scan("--format", "yaml", url=url)
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = scan("--target", "faithful", "--all-targets", url=url)
    assert out.returncode == 2


def test_unreachable_database_exits_2_quickly() -> None:
    started = time.monotonic()
    out = scan("--target", "faithful", url="postgresql://x@127.0.0.1:1/x", timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 2
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 30


def test_list_names_every_check(url: str) -> None:
    out = scan("--list", url=url)
    assert out.returncode == 0
    for check_id in CATALOGUE:
        assert check_id in out.stdout
