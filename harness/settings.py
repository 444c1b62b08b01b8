"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TARGET = "faithful"


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class Settings:
    """What the environment says; ``None`` where it says nothing."""

    database_url: str | None
    pepper: str | None
    target: str
    data_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=_env("HARNESS_DATABASE_URL", "DATABASE_URL"),
            pepper=_env("HARNESS_AT_REST_PEPPER"),
            target=_env("HARNESS_TARGET") or DEFAULT_TARGET,
            data_dir=default_data_dir(),
        )


def default_data_dir() -> Path:
    """Where the embedded server keeps its data: ``HARNESS_DATA_DIR`` or ``~/.claimcheck/pgdata``."""
    explicit = _env("HARNESS_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    return (Path.home() / ".claimcheck" / "pgdata").resolve()
