"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
import stat
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
            # Never DATABASE_URL: that one belongs to other applications on the machine.
            database_url=_env("HARNESS_DATABASE_URL"),
            pepper=_env("HARNESS_AT_REST_PEPPER"),
            target=_env("HARNESS_TARGET") or DEFAULT_TARGET,
            data_dir=default_data_dir(),
        )


def default_data_dir() -> Path:
    """Where the embedded server keeps its data: ``HARNESS_DATA_DIR``, else ``~/.claimcheck/pgdata``.

    Under root, PostgreSQL runs as another user, which must be able to reach
    the directory; the harness never opens up a home directory for it, so a
    root whose home is private gets ``/var/lib/claimcheck/pgdata`` instead.
    """
    explicit = _env("HARNESS_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    home = (Path.home() / ".claimcheck" / "pgdata").resolve()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        for parent in reversed(home.parents):
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                return Path("/var/lib/claimcheck/pgdata")
    return home
