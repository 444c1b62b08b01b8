"""pytest plugin for nbval over notebooks/: one throwaway embedded PostgreSQL for every notebook kernel.

Enable with ``-p harness.testing.nbval`` (``python3 dev.py notebooks`` does)::

    pytest -p harness.testing.nbval --nbval notebooks/ \\
        --nbval-sanitize-with tests/nbval/sanitize.cfg --nbval-current-env -p no:cacheprovider

It lives here rather than as ``notebooks/conftest.py`` so that the folder a
reviewer opens in JupyterLab holds the notebooks and nothing else.

With ``--nbval`` or ``--nbval-lax`` the session starts an embedded server of
its own in a directory it created, and removes both at the end. The kernels
inherit this process's environment and find the server through
``HARNESS_DATABASE_URL``: they use it as they would a reviewer's database
(the schema must exist, every row they write carries their run id and is
removed by their last cell). The test plugin (``harness.testing.plugin``,
required below) has already removed any ``HARNESS_DATABASE_URL`` /
``DATABASE_URL`` the caller had set, so nbval never reaches a server someone
pointed it at. Without either option this plugin does nothing.
"""

from __future__ import annotations

import os

import pytest

from harness.database import Database, connect
from harness.testing.plugin import new_data_dir

#: Scrubs the caller's database URLs and gives the session its temporary base (a no-op when
#: pyproject's addopts has loaded it already).
pytest_plugins = ["harness.testing.plugin"]

_state: dict[str, Database] = {}


def _validating(config: pytest.Config) -> bool:
    return bool(config.getoption("nbval", False) or config.getoption("nbval_lax", False))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _validating(session.config):
        return
    # A data directory under the session's own 0755 base: under root the server runs as
    # another user, which cannot enter a 0700 temporary directory.
    db = connect(data_dir=new_data_dir(session.config))  # embedded: started here, schema created
    os.environ["HARNESS_DATABASE_URL"] = db.url
    _state["db"] = db


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    db = _state.pop("db", None)
    if db is not None:
        os.environ.pop("HARNESS_DATABASE_URL", None)
        db.close()  # the last lease: stops the server (the test plugin removes its directory)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _validating(config):
        return []
    return ["claimcheck nbval: one embedded PostgreSQL for every notebook kernel (HARNESS_DATABASE_URL)"]
