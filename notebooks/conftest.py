"""nbval session: one throwaway embedded PostgreSQL, created by the session, for every notebook kernel.

The kernels inherit this process's environment and find the server through
``HARNESS_DATABASE_URL``: they use it as they would a reviewer's database
(the schema must exist, every row they write carries their run id and is
removed by their last cell). The test plugin (``harness.testing.plugin``)
has already removed any ``HARNESS_DATABASE_URL`` / ``DATABASE_URL`` the
caller had set, so nbval never reaches a server someone pointed it at.
"""

from __future__ import annotations

import os

import pytest

from harness.database import Database, connect
from harness.testing.plugin import new_data_dir

_state: dict[str, Database] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # A data directory under the session's own 0755 base: under root the server runs as
    # another user, which cannot enter a 0700 temporary directory.
    db = connect(data_dir=new_data_dir(session.config))  # embedded: started here, schema created
    os.environ["HARNESS_DATABASE_URL"] = db.url
    _state["db"] = db


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    db = _state.pop("db", None)
    if db is not None:
        os.environ.pop("HARNESS_DATABASE_URL", None)
        db.close()  # the last lease: stops the server (the plugin removes its directory)
