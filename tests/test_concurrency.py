"""Races on the real server: one winner per code and per refresh token, with measured overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, cast

import pytest

from harness import checkers
from harness.database import Database
from harness.errors import INVALID_CODE, INVALID_REFRESH_TOKEN, OAuthError, TokenInvalidError, ValidationError
from harness.history import History
from harness.race import RACE_CLIENT, REDIRECT_URI, race_code, race_threads, seed_codes
from harness.repository import OAuthRepository, RefreshTokenParams
from harness.testing.plugin import CLIENT, USER

pytestmark = pytest.mark.slow


class RecordingTarget:
    """Passes every call to the target, keeping each refusal's (kind, public message)."""

    def __init__(self, target: OAuthRepository) -> None:
        self.target = target
        self.refusals: list[tuple[type[OAuthError], str]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def exchange_code(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.target.exchange_code(*args, **kwargs)
        except OAuthError as exc:
            with self._lock:
                self.refusals.append((type(exc), str(exc)))
            raise


def report(record_property: Callable[[str, object], None], name: str, result: checkers.Result) -> None:
    record_property(name, result.summary)
    print(f"\n{name}: {result.summary}")


def test_16_racers_on_each_of_200_codes_one_winner(
    faithful: OAuthRepository, record_property: Callable[[str, object], None]
) -> None:
    seed_codes(faithful, "t16", 200)
    recording = RecordingTarget(faithful)
    race = race_threads(cast(OAuthRepository, recording), racers=16, codes=200, seed="t16")

    # 1. the racers really raced: on every code at least 2 attempts were in flight at once
    report(record_property, "overlap", race.overlap)
    assert race.overlap.valid, race.overlap.evidence[:5]
    assert race.overlap.summary["keys_raced"] == 200
    # 2. exactly one winner per code, no indeterminate outcome
    report(record_property, "winners", race.winners)
    assert race.winners.valid, race.winners.evidence[:5]
    assert race.winners.summary["keys"] == 200
    assert (race.winners.summary["wins"], race.winners.summary["losses"],
            race.winners.summary["indeterminate"]) == (200, 200 * 15, 0)
    # 3. every loser got exactly the public message, nothing that tells spent from unknown
    assert len(recording.refusals) == 200 * 15
    assert set(recording.refusals) == {(ValidationError, INVALID_CODE)}


def test_negative_control_naive_double_wins_are_caught(
    make_target: Callable[..., OAuthRepository], record_property: Callable[[str, object], None]
) -> None:
    naive = make_target("naive")
    seed_codes(naive, "naive16", 40)
    race = race_threads(naive, racers=16, codes=40, seed="naive16")
    report(record_property, "naive overlap", race.overlap)
    report(record_property, "naive winners", race.winners)
    assert race.overlap.valid
    # the checker fails, and says which codes were won more than once
    assert not race.winners.valid
    assert race.winners.summary["double_wins"] > 0
    assert all(row["problem"] == "won more than once" and row["wins"] >= 2
               for row in race.winners.evidence)


def test_overlap_check_fails_when_nothing_raced(faithful: OAuthRepository) -> None:
    # Two attempts per code, one after the other: a single winner, but no race to speak of.
    seed_codes(faithful, "seq", 20)
    history = History()
    for i in range(20):
        for process in (0, 1):
            history.run(process, "exchange", {"code": i}, partial(
                faithful.exchange_code, race_code("seq", i), RACE_CLIENT, REDIRECT_URI))
    assert checkers.single_winner(history).valid
    verdict = checkers.overlap(history)
    assert not verdict.valid
    assert verdict.summary["keys_raced"] == 0 and len(verdict.evidence) == 20


def waiting_on_the_row(db: Database) -> int:
    """How many backends are blocked on a lock in a refresh-token UPDATE."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'UPDATE oauth_refresh_tokens SET consumed_at%%'").fetchone()
    return int(row[0]) if row else 0


def race_refresh(db: Database, target: OAuthRepository, tokens: list[str],
                 racers: int) -> tuple[History, list[str], list[int]]:
    """``racers`` threads consume each token together, released by a barrier per token.

    One consume is a single round trip, shorter than a thread's wake-up on a loaded
    2-core machine (a plain barrier left 1 token in 100 unraced once), so the round
    is gated: the test holds the token's row lock, releases the racers, waits until
    all of them are blocked on that row inside their UPDATE, then lets go. The
    database then elects the winner among racers that are provably all in flight;
    the overlap checker still measures it from the history.
    """
    history = History()
    barrier = threading.Barrier(racers + 1)
    messages: list[str] = []
    blocked: list[int] = []  # per round: racers seen waiting on the row when the gate opened
    lock = threading.Lock()

    def consume(token: str) -> object:
        try:
            return target.consume_refresh_token(token, CLIENT)
        except TokenInvalidError as exc:
            with lock:
                messages.append(str(exc))
            raise

    def racer(process: int) -> None:
        for i, token in enumerate(tokens):
            barrier.wait()
            history.run(process, "consume", {"token": i}, partial(consume, token))

    threads = [threading.Thread(target=racer, args=(p,)) for p in range(racers)]
    for thread in threads:
        thread.start()
    with db.connect(autocommit=False) as gate:
        for token in tokens:
            gate.execute("SELECT 1 FROM oauth_refresh_tokens WHERE token_id = %s FOR UPDATE",
                         (target.hash(token),))
            barrier.wait()
            deadline = time.monotonic() + 10
            while (waiting := waiting_on_the_row(db)) < racers and time.monotonic() < deadline:
                time.sleep(0.001)
            blocked.append(waiting)
            gate.commit()
    for thread in threads:
        thread.join()
    return history, messages, blocked


def test_8_racers_on_one_refresh_token_one_winner(
    db: Database, faithful: OAuthRepository, record_property: Callable[[str, object], None]
) -> None:
    tokens = [f"rt-race-{i}" for i in range(100)]
    for token in tokens:
        faithful.store_refresh_token(RefreshTokenParams(
            token_id=token, client_id=CLIENT, user_id=USER, scope="openid",
            expires_at=faithful.clock.now() + timedelta(hours=1)))
    history, messages, blocked = race_refresh(db, faithful, tokens, racers=8)
    assert set(blocked) == {8}  # every round: all 8 racers were inside their UPDATE at once

    overlap = checkers.overlap(history, f="consume", key="token")
    report(record_property, "refresh overlap", overlap)
    assert overlap.valid, overlap.evidence[:5]
    assert overlap.summary["keys_all_in_flight"] == 100
    winners = checkers.single_winner(history, f="consume", key="token")
    report(record_property, "refresh winners", winners)
    assert winners.valid, winners.evidence[:5]
    assert (winners.summary["wins"], winners.summary["losses"]) == (100, 700)
    assert set(messages) == {INVALID_REFRESH_TOKEN} and len(messages) == 700
    # the losers presented a consumed token: reuse detection deleted every family
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM oauth_refresh_tokens").fetchone() == (0,)
