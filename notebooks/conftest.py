"""nbval session: one throwaway embedded PostgreSQL for every notebook kernel, unless a URL is given."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.embedded import EmbeddedServer

_state: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Kernels inherit this process's environment: they find the server through
    # HARNESS_DATABASE_URL, and never touch the data of a server the reviewer runs.
    if os.environ.get("HARNESS_DATABASE_URL") or os.environ.get("DATABASE_URL"):
        return
    tmp = Path(tempfile.mkdtemp(prefix="claimcheck-nbval-"))
    server = EmbeddedServer(tmp / "data")
    url, _ = server.start()
    os.environ["HARNESS_DATABASE_URL"] = url
    _state.update(server=server, tmp=tmp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = _state.pop("server", None)
    if isinstance(server, EmbeddedServer):
        os.environ.pop("HARNESS_DATABASE_URL", None)
        server.stop()
        shutil.rmtree(str(_state.pop("tmp")), ignore_errors=True)
