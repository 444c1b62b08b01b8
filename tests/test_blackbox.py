"""Test your own server (issue 9): the checks and the race aimed at a real server over HTTP.

The server is one nobody here wrote: Authlib's authorization server built as its documentation
shows (tests/authlib_server), under gunicorn, described by tests/authlib_server/authlib.toml. The
same server with its code claimed atomically is the positive control, and the same server with
one process and one thread shows that a race there proves nothing (and says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from authlib_server.launcher import start_authlib_server
from conftest import harness_serve

from harness.checks import CATALOGUE, Verdict, scan
from harness.checks.expected import expected_verdict
from harness.database import Database
from harness.errors import SetupError
from harness.targets.endpoint import load_description

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
AUTHLIB = ROOT / "tests" / "authlib_server" / "authlib.toml"
DESCRIPTION = ROOT / "examples" / "endpoints" / "harness-serve.toml"


@dataclass(frozen=True)
class Running:
    env: dict[str, str]
    claim: str
    concurrency: int


@contextlib.contextmanager
def serving(database_url: str, claim: str, workers: int, threads: int) -> Iterator[Running]:
    secret = secrets.token_urlsafe(24)
    with start_authlib_server(database_url, workers=workers, threads=threads, claim=claim,
                              secret=secret) as base:
        env = {"AUTHLIB_SERVER": base, "AUTHLIB_CONCURRENCY": str(workers * threads),
               "AUTHLIB_CLIENT_SECRET": secret, "AUTHLIB_DATABASE_URL": database_url}
        yield Running(env, claim, workers * threads)


@pytest.fixture(scope="module", params=["documented", "atomic"])
def authlib(request: pytest.FixtureRequest, authlib_database: str) -> Iterator[Running]:
    """Authlib as documented, and with the code claimed atomically: 2 processes × 2 threads."""
    with serving(authlib_database, request.param, 2, 2) as running:
        yield running


@pytest.fixture(scope="module")
def authlib_serial(authlib_database: str) -> Iterator[Running]:
    """Authlib as documented, one process, one thread: requests never run in parallel."""
    with serving(authlib_database, "documented", 1, 1) as running:
        yield running


def harness(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL", "HARNESS_AT_REST_PEPPER")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "harness", *args], env=environ, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def race_json(running: Running, racers: int = 8, codes: int = 20) -> tuple[int, dict[str, Any]]:
    done = harness("race", "--target", str(AUTHLIB), "--racers", str(racers), "--codes", str(codes),
                   "--format", "json", "--no-progress", env=running.env)
    assert done.stdout, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    print(f"\n{running.claim} x{running.concurrency}: verdict {doc['verdict']}, "
          f"{doc['single_winner']['double_wins']} of {codes} codes double-won, {doc['ops']['info']} "
          f"indeterminate (5xx), {doc['tokens_returned']} token sets returned, "
          f"{doc['tokens_committed']} committed, after the race {doc['after_race']}, "
          f"median start spread {doc['overlap']['median_spread_us']} µs")
    ov = doc["overlap"]
    assert ov["raced_fraction"] >= 0.9 and ov["max_in_flight"] >= 2  # the racers really overlapped
    assert doc["server_concurrency"] == running.concurrency
    after = doc["after_race"]
    # Replaying a won code is refused, but it revokes nothing: every winner's tokens live on.
    assert after["replays_refused"] == after["codes_replayed"] > 0
    assert after["refresh_tokens_usable_after_replay"] == after["winning_token_sets"]
    assert after["access_tokens_active_after_replay"] == after["winning_token_sets"]
    return done.returncode, doc


def test_the_race_over_http_catches_the_documented_pattern(authlib: Running) -> None:
    status, doc = race_json(authlib)
    if authlib.claim == "atomic":
        assert (status, doc["verdict"]) == (0, "pass")
        assert doc["single_winner"]["double_wins"] == 0
        assert doc["tokens_committed"] == doc["tokens_returned"] == 20
    else:
        assert (status, doc["verdict"]) == (1, "double win")
        assert doc["single_winner"]["double_wins"] > 0
        # Every 5xx came after its token had been committed: more tokens stored than handed out.
        assert doc["tokens_committed"] == doc["tokens_returned"] + doc["ops"]["info"]


def test_a_race_on_a_serial_server_proves_nothing_and_says_so(authlib_serial: Running) -> None:
    # One process, one thread: the racers overlap on the wire, the server serialises them.
    status, doc = race_json(authlib_serial)
    assert doc["single_winner"]["double_wins"] == 0
    assert (status, doc["verdict"]) == (1, "inconclusive")
    table = harness("race", "--target", str(AUTHLIB), "--racers", "4", "--codes", "3",
                    "--no-progress", env=authlib_serial.env)
    assert "nothing can race" in table.stdout and "INCONCLUSIVE" in table.stdout


#: What Authlib's documented server does, read from its code: PKCE ``plain`` is accepted
#: (CodeChallenge supports it), a replay is refused but revokes nothing (no record of a spent
#: code), a rotated-out refresh token is refused but revokes nothing (no families), and the
#: non-atomic redemption double-issues under a race.
AUTHLIB_VIOLATES = {"pkce.plain", "replay.revokes-family", "replay.cross-client",
                    "replay.access-tokens", "refresh.rotation", "refresh.grace-policy",
                    "refresh.grace-cross-client", "race.single-winner"}
#: Checks that need what an HTTP server cannot give (step hooks, clock, rows, logs, tracing).
NOT_BLACK_BOX = {"pkce.constant-time", "code.expiry", "replay.between-claim-and-link",
                 "replay.log-secrets", "replay.audit-trail", "refresh.concurrent", "refresh.expiry",
                 "at-rest.no-raw-secrets", "at-rest.digest", "at-rest.pepper", "token.access-expiry",
                 "token.resource", "repository.cleanup-expired", "repository.revoke-token",
                 "repository.code-client", "repository.token-family", "repository.token-client",
                 "repository.validate-refresh"}


def test_every_check_that_can_run_black_box_runs_with_a_verdict_from_authlibs_code(
        authlib: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in authlib.env.items():
        monkeypatch.setenv(name, value)
    results = scan(None, str(AUTHLIB))
    verdicts: dict[str, Verdict] = {r.id: r.verdict for r in results}
    assert set(verdicts) == set(CATALOGUE)
    assert "error" not in verdicts.values(), [r.evidence for r in results if r.verdict == "error"]
    expected: dict[str, str] = {}
    for check_id in CATALOGUE:
        if check_id in NOT_BLACK_BOX:
            expected[check_id] = "not_applicable"
        elif check_id in AUTHLIB_VIOLATES and not (authlib.claim == "atomic"
                                                   and check_id == "race.single-winner"):
            expected[check_id] = "violated"
        else:
            expected[check_id] = "holds"
    assert verdicts == expected
    for r in results:
        if r.verdict == "not_applicable":
            assert r.evidence[0]["reason"].startswith("needs "), r.evidence  # the capability named


def test_a_black_box_scan_needs_no_database_and_no_pepper(authlib: Running, pg_data_dir: Path) -> None:
    done = harness("scan", "--target", str(AUTHLIB), "--only", "pkce", "--format", "json",
                   env={**authlib.env, "HARNESS_DATA_DIR": str(pg_data_dir)})
    assert done.returncode == 1, done.stderr  # pkce.plain is violated
    doc = json.loads(done.stdout)
    assert {c["id"]: c["verdict"] for c in doc["checks"]}["pkce.plain"] == "violated"
    assert not pg_data_dir.exists()  # no embedded server was started for it


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


GOOD = """
token_url = "http://127.0.0.1:9/token"
concurrency = 2
[codes]
authorize_url = "${CC_TEST_BASE:-http://127.0.0.1:9}/authorize"
[[clients]]
id = "a"
secret_env = "CC_TEST_SECRET"
redirect_uri = "https://client.example/cb"
[[clients]]
id = "b"
auth = "none"
redirect_uri = "https://client.example/cb"
"""


def test_a_description_is_read_with_its_secrets_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TEST_SECRET", "s3cret")
    d = load_description(write(tmp_path, GOOD))
    assert d.codes.authorize_url == "http://127.0.0.1:9/authorize"  # ${…:-default}
    assert d.clients[0].secret == "s3cret" and d.clients[0].auth == "client_secret_basic"
    assert "s3cret" not in repr(d)  # never echoed
    monkeypatch.setenv("CC_TEST_BASE", "http://127.0.0.1:7")
    assert load_description(write(tmp_path, GOOD)).codes.authorize_url == "http://127.0.0.1:7/authorize"


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace('token_url = "http://127.0.0.1:9/token"\n', ""), "`token_url` is required"),
    (lambda t: t.replace("concurrency = 2", "concurrency = 0"), "`concurrency`"),
    (lambda t: t.split("[[clients]]")[0] + "[[clients]]" + t.split("[[clients]]")[1], "two [[clients]]"),
    (lambda t: t.replace('auth = "none"', 'auth = "magic"'), "auth must be one of"),
    (lambda t: t.replace('secret_env = "CC_TEST_SECRET"', 'secret_env = "CC_TEST_UNSET"'),
     "CC_TEST_UNSET (secret_env) is not set"),
    (lambda t: t.replace("[codes]", "[nocodes]"), "[codes] table"),
    (lambda t: t.replace('"http://127.0.0.1:9/token"', '"ftp://x/token"'), "not an http(s) URL"),
    (lambda t: t + "\n[[[", "not valid TOML"),
])
def test_a_wrong_description_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               change: Any, message: str) -> None:
    monkeypatch.setenv("CC_TEST_SECRET", "s3cret")
    with pytest.raises(SetupError) as info:
        load_description(write(tmp_path, change(GOOD)))
    assert message in str(info.value)


def test_a_description_given_as_target_that_is_missing_exits_2(tmp_path: Path) -> None:
    for command in (["scan"], ["race", "--no-progress"]):
        done = harness(*command, "--target", str(tmp_path / "nope.toml"), env={})
        assert done.returncode == 2 and "no endpoint description" in done.stderr, done


# -- harness serve, black box: the same verdicts as in process ----------------------------------------

#: Where the black-box variant of a check judges less than the in-process one, and why:
#: ``code.single-use`` over HTTP is the sequential replay only (the mid-claim interleaving needs
#: step hooks; the race covers the concurrent case), and ``refresh.grace-policy`` judges the
#: policy the server runs (strict for every shipped target), not a grace window it cannot be given.
NARROWER_BLACK_BOX = {("naive", "code.single-use"): "holds", ("faithful", "refresh.grace-policy"): "holds"}


@pytest.mark.parametrize("target", ["faithful", "hardened", "naive"])
def test_harness_serve_black_box_gives_the_in_process_verdicts(
        target: str, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATABASE_URL", "DATABASE_URL")}
    env.update(HARNESS_DATABASE_URL=database.url, HARNESS_AT_REST_PEPPER="blackbox-pepper",
               CLAIMCHECK_CLIENT_SECRET=secret)
    with harness_serve("--target", target, env=env, logs=tmp_path / "logs") as served:
        monkeypatch.setenv("CLAIMCHECK_SERVER", served.base)
        monkeypatch.setenv("CLAIMCHECK_CLIENT_SECRET", secret)
        results = scan(None, str(DESCRIPTION))
    verdicts = {r.id: r.verdict for r in results}
    assert "error" not in verdicts.values(), [r.evidence for r in results if r.verdict == "error"]
    for check_id, verdict in verdicts.items():
        if check_id in NOT_BLACK_BOX:
            assert verdict == "not_applicable", check_id
            continue
        want = NARROWER_BLACK_BOX.get((target, check_id), expected_verdict(target, check_id))
        assert verdict == want, (target, check_id, [r.evidence for r in results if r.id == check_id])
