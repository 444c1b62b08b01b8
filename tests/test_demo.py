"""The main job, ``harness demo`` (``python3 dev.py run``): a reviewer's report, and its database as root."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from harness.checks import CATALOGUE, SEVERITIES
from harness.checks.expected import FAITHFUL_FINDINGS, expected_violations
from harness.errors import SetupError
from harness.settings import default_data_dir

HARNESS = [sys.executable, "-m", "harness"]
PEPPER = "demo-test-pepper"
DEMO = ["demo", "--racers", "4", "--codes", "20"]
#: A target of the reviewer's own, next to the test: the naive control under another name.
TARGET_MODULE = "cc_demo_reviewed"


def demo(data_dir: Path, target: str | None, *, pythonpath: Path | None = None,
         timeout: float = 240, baseline: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_TARGET")}
    env["HARNESS_AT_REST_PEPPER"] = PEPPER
    env["HARNESS_DATA_DIR"] = str(data_dir)
    if target is not None:
        env["HARNESS_TARGET"] = target
    if baseline is not None:
        env["CLAIMCHECK_FAITHFUL_BASELINE"] = str(baseline)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return subprocess.run([*HARNESS, *DEMO], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def section(out: str, title: str) -> str:
    """The text of the section headed by a line starting with ``title``, up to the next heading."""
    match = re.search(rf"^{re.escape(title)}.*?(?=^[A-Z][A-Z ]+[A-Z](?:\b|:)|\Z)", out, re.M | re.S)
    assert match, f"no section {title!r} in:\n{out}"
    return match.group(0)


def matrix_header(out: str) -> list[str]:
    block = section(out, "EVERY CHECK ON EVERY TARGET")
    header = next(line for line in block.splitlines()[1:] if line.strip())
    return header.split()


@pytest.mark.slow
def test_the_report_with_a_shipped_target_set(pg_data_dir: Path) -> None:
    """HARNESS_TARGET=naive names a shipped target: the usual three columns, and the whole report."""
    out = demo(pg_data_dir, "naive")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    lines = text.rstrip("\n").splitlines()

    review = section(text, "UNDER REVIEW")
    assert "the Rust crate systemprompt-oauth 0.14.4" in review and "`faithful`" in review
    assert f"{len(CATALOGUE)} checks" in review  # counted, not written down
    assert "Also scanned" not in text

    findings = section(text, "FINDINGS on faithful")
    assert f"{len(FAITHFUL_FINDINGS)} of {len(CATALOGUE)} checks violated" in findings
    groups = re.findall(r"^  ([A-Z]+) \((\d+)\)$", findings, re.M)
    headings = list(re.finditer(r"^  ([A-Z]+) \(\d+\)$", findings, re.M))
    order = [s.upper() for s in SEVERITIES]
    assert [g for g, _ in groups] == sorted((g for g, _ in groups), key=order.index), "critical → low"
    assert sum(int(n) for _, n in groups) == len(FAITHFUL_FINDINGS)
    for check_id in FAITHFUL_FINDINGS:
        spec = CATALOGUE[check_id]
        entry = re.search(rf"^  - {re.escape(check_id)} — (.+?)(?=^  - |^  [A-Z]+ \(|\Z)", findings,
                          re.M | re.S)
        assert entry, check_id
        body = " ".join(entry.group(0).split())
        assert " ".join(spec.title.split()) in body
        assert f"source: {' '.join(spec.source.split())}" in body
        assert "fails at: " in body and "expected" in body and "observed" in body
        heading = [m.group(1) for m in headings if m.start() < entry.start()][-1]
        assert heading == spec.severity.upper(), f"{check_id} under {heading}"
    assert not any(f"- {i} —" in findings for i in CATALOGUE if i not in FAITHFUL_FINDINGS)

    controls = section(text, "CONTROLS")
    assert f"clean, {len(CATALOGUE)} of {len(CATALOGUE)} checks hold" in controls
    assert f"caught by {len(expected_violations('naive'))} of {len(CATALOGUE)} checks" in controls
    assert "faithful passes" in controls and re.search(r"naive double-wins \d+ of 20 codes", controls)
    race_rows = {line.split()[0]: line.split() for line in controls.splitlines()
                 if len(line.split()) >= 8 and line.split()[0] in ("faithful", "naive")}
    assert race_rows["faithful"][1] == "pass" and race_rows["faithful"][3] == "0/20"
    assert race_rows["naive"][1:3] == ["double", "win"]

    assert matrix_header(text) == ["id", "severity", "faithful", "hardened", "naive"]

    nxt = section(text, "NEXT")
    for pointer in ("harness scan --target faithful", "python3 dev.py lab", "docs/findings.md",
                    '"Test your own server"'):
        assert pointer in nxt

    last = lines[-1]
    assert last.startswith("exit 0: the harness behaved as expected")
    assert "not a pass for systemprompt-oauth 0.14.4" in last
    assert f"{len(FAITHFUL_FINDINGS)} findings" in last
    assert not re.search(r"\bseeds?\b", text, re.I), "an unexplained word for the reader"
    assert "Traceback" not in out.stderr


@pytest.fixture
def reviewed_module(tmp_path: Path) -> Iterator[Path]:
    """A ``module:factory`` of the reviewer's own, in a directory of the test's own."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / f"{TARGET_MODULE}.py").write_text(
        '"""A repository under review: here, the naive control under another name."""\n'
        "from harness.sut.naive import make as _make\n\n\n"
        "def make(db, **options):\n"
        "    return _make(db, **options)\n")
    yield folder


@pytest.mark.slow
def test_another_target_is_a_fourth_column_whose_findings_do_not_change_the_exit(
        pg_data_dir: Path, reviewed_module: Path) -> None:
    target = f"{TARGET_MODULE}:make"
    out = demo(pg_data_dir, target, pythonpath=reviewed_module)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert matrix_header(text) == ["id", "severity", "faithful", "hardened", "naive", target]
    assert f"Also scanned: HARNESS_TARGET={target}" in " ".join(section(text, "UNDER REVIEW").split())
    mine = section(text, f"FINDINGS on {target}")
    violated = len(expected_violations("naive"))
    assert f"{violated} of {len(CATALOGUE)} checks violated" in mine
    assert "CRITICAL (" in mine and "- code.single-use — " in mine
    assert f"harness scan --target {target}" in section(text, "NEXT")
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("exit 0: the harness behaved as expected")
    assert f"{target} ({violated} findings) is not judged by the exit status" in last
    # no expectations for it: its verdicts are never marked "not as expected"
    assert "NOT AS EXPECTED" not in text and " *" not in section(text, "EVERY CHECK ON EVERY TARGET")


@pytest.mark.slow
def test_a_drift_inside_a_known_gap_is_named_against_the_accepted_baseline(
        pg_data_dir: Path, tmp_path: Path) -> None:
    # Issue 10: a gap of faithful that changes shape changes no verdict; the baseline sees it.
    # Here the accepted baseline lacks one of faithful's failing steps, as if it were new.
    import json

    from harness.commands.demo import FAITHFUL_BASELINE

    doc = json.loads(FAITHFUL_BASELINE.read_text())
    entry = doc["targets"]["faithful"]["pkce.downgrade"]
    assert entry["failing_steps"], entry
    entry["failing_steps"] = []
    entry["verdict"] = "holds"
    edited = tmp_path / "baseline.json"
    edited.write_text(json.dumps(doc))
    out = demo(pg_data_dir, None, baseline=edited)
    assert out.returncode == 1, out.stdout + out.stderr
    drift = section(out.stdout, "NOT AS EXPECTED")
    assert "faithful pkce.downgrade, against its accepted baseline: new violation" in drift


def test_a_target_that_cannot_be_loaded_is_one_line_and_exit_2(pg_data_dir: Path) -> None:
    out = demo(pg_data_dir, "nope:nope", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("harness: error: HARNESS_TARGET=nope:nope: cannot import module 'nope'")


# -- the main job's database, run as root ---------------------------------------------------


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh directory of the test's own, mode 0700 (as a home directory often is)."""
    folder = Path(tempfile.mkdtemp(prefix="cc-private-"))
    folder.chmod(0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_a_data_dir_under_a_private_directory_is_refused_as_root_and_left_alone(
        private_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under root, PostgreSQL runs as another user: the harness says why it cannot, and never
    opens the directory up for it (the old code made a 0700 home 0755)."""
    if not is_root():
        pytest.skip("root only: as another user PostgreSQL runs as that user, who can reach the directory")
    data = private_dir / "pgdata"
    monkeypatch.setenv("HARNESS_DATA_DIR", str(data))
    with pytest.raises(SetupError) as info:
        harness.connect()
    message = str(info.value)
    assert "cannot reach its data directory" in message
    assert f"{private_dir} is mode 700" in message
    assert "HARNESS_DATA_DIR" in message and "\n" not in message
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700, "an existing directory was chmodded"
    assert not data.exists()


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_the_default_data_dir_follows_the_home_directory_mode(
        private_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    """Root with a private home gets /var/lib/claimcheck/pgdata; otherwise ~/.claimcheck/pgdata."""
    private_dir.chmod(mode)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(private_dir))
    in_home = (private_dir / ".claimcheck" / "pgdata").resolve()
    expected = Path("/var/lib/claimcheck/pgdata") if is_root() and mode == 0o700 else in_home
    assert default_data_dir() == expected
    assert stat.S_IMODE(private_dir.stat().st_mode) == mode
