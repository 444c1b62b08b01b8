"""The ``naive`` target: the negative control.

Identical to the faithful port except for the claim: it reads the row with
``used_at IS NULL``, then marks it used with an UPDATE that does not re-check
``used_at``. At READ COMMITTED two callers can both read the unused row and
both "win". A race check that does not catch this target proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.claims import Isolation, Strategy
from harness.database import Database
from harness.repository import OAuthRepository


@dataclass
class NaiveRepository(OAuthRepository):
    claim_strategy: Strategy = Strategy.NAIVE
    claim_isolation: Isolation = Isolation.READ_COMMITTED

    name = "naive"


def make(db: Database, **kwargs: Any) -> NaiveRepository:
    return NaiveRepository(db, **kwargs)
