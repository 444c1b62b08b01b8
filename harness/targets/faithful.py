"""The ``faithful`` target: the seed's repository as it is (see ``harness.repository``)."""

from __future__ import annotations

from typing import Any

from harness.database import Database
from harness.repository import OAuthRepository


def make(db: Database, **kwargs: Any) -> OAuthRepository:
    return OAuthRepository(db, **kwargs)
