"""Races: N racers released together by a barrier on each of M codes, recorded as a history."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.checkers import Result, overlap, single_winner
from harness.history import History
from harness.repository import AuthCodeParams, OAuthRepository

RACE_CLIENT = "race-client"
RACE_USER = "race-user"
REDIRECT_URI = "https://client.example/cb"


def race_code(seed: str, index: int) -> str:
    """The raw code for ``index``: anyone who knows the seed derives it, nothing is shared."""
    return hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()


@dataclass(frozen=True)
class RaceReport:
    """The history, the single-winner verdict and the measured overlap."""

    history: History
    winners: Result
    overlap: Result

    @property
    def valid(self) -> bool:
        return self.winners.valid


def seed_codes(target: OAuthRepository, seed: str, codes: int) -> None:
    """Store ``codes`` race codes for ``RACE_CLIENT`` (no PKCE, so every racer sends the same request)."""
    target.db.ensure_party(RACE_CLIENT, RACE_USER)
    for i in range(codes):
        target.store_authorization_code(
            AuthCodeParams(code=race_code(seed, i), client_id=RACE_CLIENT, user_id=RACE_USER,
                           redirect_uri=REDIRECT_URI, scope="openid")
        )


def race_threads(
    target: OAuthRepository,
    *,
    racers: int,
    codes: int,
    seed: str = "race",
    operation: str = "exchange",
    progress: Callable[[int], None] | None = None,
) -> RaceReport:
    """``racers`` threads attempt each of ``codes`` codes together, released by a barrier per code.

    ``operation`` is ``exchange`` (the grant flow) or ``validate`` (the claim
    and its checks only). Codes must already be stored (``seed_codes``).
    """
    history = History()
    barrier = threading.Barrier(racers)
    call: Callable[[str], Any]
    if operation == "exchange":
        def call(code: str) -> Any:
            return target.exchange_code(code, RACE_CLIENT, REDIRECT_URI)
    else:
        def call(code: str) -> Any:
            return target.validate_authorization_code(code, RACE_CLIENT, REDIRECT_URI)

    def racer(process: int) -> None:
        for i in range(codes):
            code = race_code(seed, i)
            barrier.wait()
            history.run(process, "exchange", {"code": i}, lambda code=code: call(code))
            if process == 0 and progress is not None:
                progress(1)

    threads = [threading.Thread(target=racer, args=(p,), name=f"racer-{p}") for p in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return RaceReport(history, single_winner(history), overlap(history))
