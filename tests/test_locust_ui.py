"""The verdict where load testers look: Locust's web UI, a "Single winner" tab of its own.

The tab's rows come with every ``/stats/requests`` answer (Locust's ``extended_stats``): the
racers' reports while the run goes, then the verdict. Also: its start page has no "no host
attribute set" warning for database users, and the report it serves opens with the verdict.
Each run is short (a few seconds) and bounded.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCUST, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TAB = "single-winner"




@pytest.fixture
def env(locust_env: dict[str, str], pepper: str) -> dict[str, str]:
    return {**locust_env, "HARNESS_AT_REST_PEPPER": pepper}


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode("utf-8"))


def template_args(page: str) -> dict[str, Any]:
    """What the web UI's page renders from (``window.templateArgs = {...}``)."""
    found = re.search(r"window\.templateArgs = (.*)", page)
    assert found, page[:500]
    args: dict[str, Any] = json.loads(found.group(1))
    return args


def tab_rows(answer: dict[str, Any]) -> dict[str, str]:
    """The single-winner tab's rows in a ``/stats/requests`` answer, by name."""
    tables = [t for t in answer.get("extended_stats", []) if t["key"] == TAB]
    assert len(tables) == 1, answer.get("extended_stats")
    return {row["name"]: row["value"] for row in tables[0]["data"]}


def test_the_tab_shows_the_run_live_then_its_verdict(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    verdict_file = tmp_path / "verdict.json"
    proc = subprocess.Popen(
        [*LOCUST, "--autostart", "--autoquit", "4", "-u", "8", "-r", "8", "-t", "4s", "--target", "naive",
         "--web-host", "127.0.0.1", "--web-port", str(port), "--verdict-file", str(verdict_file),
         "DatabaseUser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    page: str | None = None
    polls: list[dict[str, Any]] = []
    report = served = None
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                page = page or get(f"{base}/")
                answer = json.loads(get(f"{base}/stats/requests"))
                polls.append(answer)
                if report is None and tab_rows(answer).get("source", "").startswith("judged"):
                    report = get(f"{base}/stats/report")
                    served = json.loads(get(f"{base}/claimcheck/verdict"))
            except OSError:
                pass  # not up yet, or already gone
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out[-3000:]
    verdict = json.loads(verdict_file.read_text())
    s = verdict["summary"]

    # The tab, declared as Locust's extended tabs; and no "no host attribute set" warning.
    assert page is not None
    args = template_args(page)
    assert args["extended_tabs"] == [{"title": "Single winner", "key": TAB}]
    assert [t["key"] for t in args["extended_tables"]] == [TAB]
    assert not args["missing_host_warning"] and not args["override_host_warning"]
    assert args["host"].startswith("postgresql://") and "password" not in args["host"]

    rows = [tab_rows(a) for a in polls]
    # Live while the run goes: the racers' numbers, and naive's double wins as they happen.
    live = [r for r in rows if r.get("source", "").startswith("live")]
    assert any(int(r["wins"]) > 0 for r in live), rows
    assert any(r["verdict"].startswith("VIOLATED so far") for r in live), rows
    # Then the verdict, as judged from the ledger.
    final = rows[-1]
    assert final.get("source", "").startswith("judged"), rows[-3:]
    assert final["verdict"] == f"VIOLATED: {s['double_won']} code(s) won more than once"
    assert final["wins"] == str(s["wins"])
    assert final["target"] == f"naive (run {verdict['run_id']})"
    # The UI polls only while a run is on: no answer said "stopped" before the verdict was in.
    for answer, row in zip(polls, rows, strict=True):
        if answer["state"] == "stopped":
            assert row.get("source", "").startswith("judged"), row
    # A double win is a Locust failure: in the UI's failures and its failure ratio.
    errors = polls[-1]["errors"]
    assert [e["occurrences"] for e in errors if e["name"] == "single-winner: double win"] == [s["double_won"]]
    assert polls[-1]["fail_ratio"] > 0
    # The report the UI serves, and the verdict as JSON.
    assert report is not None and 'id="claimcheck-verdict"' in report
    assert f"VIOLATED: {s['double_won']} code(s) won more than once" in report
    assert served is not None and served["run_id"] == verdict["run_id"]
    assert "single-winner verdict (target naive," in out  # the terminal too, as the run was judged


def test_refresh_users_need_no_host_either(env: dict[str, str]) -> None:
    """The start page, before any run: no host warning, and the tab says there is nothing yet."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*LOCUST, "--web-host", "127.0.0.1", "--web-port", str(port), "RefreshUser"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    page = answer = None
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and answer is None:
            try:
                page = get(f"{base}/")
                answer = json.loads(get(f"{base}/stats/requests"))
            except OSError:
                time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert page is not None and answer is not None, out[-3000:]
    args = template_args(page)
    assert not args["missing_host_warning"] and args["host"].startswith("postgresql://")
    assert tab_rows(answer)["verdict"].startswith("no run yet")
    assert proc.returncode == 2, out[-3000:]  # nothing raced, nothing proven
    last = out.rstrip().splitlines()[-1]
    assert last == "single-winner verdict: INCONCLUSIVE: no run was judged (nothing raced)", out[-3000:]
