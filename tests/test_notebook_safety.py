"""``harness notebook`` on someone else's database: only its own rows, removed; no secret in the evidence.

The database here stands in for a reviewer's staging database: a fresh
embedded cluster, reached by URL (as a staging database would be), that
already holds rows the harness did not write (a client, a user, a code and a
refresh token, named as the old notebooks named theirs) and a table of its
own that references ``users``. After a notebook run every one of those rows
must be byte-identical, and no row of the run (``cc-…``) may be left; the
password of the URL must appear nowhere in the executed notebook.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psycopg
import pytest
from psycopg import conninfo

from harness import walkthrough
from harness.cli import main
from harness.commands.notebook import EXIT_USAGE, EXIT_VIOLATED, exit_status
from harness.database import Database, connect
from harness.testing.plugin import new_data_dir

pytestmark = pytest.mark.slow
PASSWORD = "SECRETPW"
PEPPER = "SECRETPEPPER-not-for-evidence"
#: Small sizes: the naive target fails at the first race anyway.
SMALL = ["-p", "racers=4", "-p", "codes=10"]
RUN_TABLES = {"users": "id", "oauth_clients": "client_id", "oauth_auth_codes": "client_id",
              "oauth_refresh_tokens": "client_id"}


@dataclass
class Staging:
    db: Database
    #: The cluster's URL with a (dummy) password: the embedded server trusts local connections.
    url: str

    def dump(self) -> dict[str, list[str]]:
        """Every row of the five tables as PostgreSQL's text form, in a stable order."""
        with self.db.connect() as conn:
            return {table: [r[0] for r in conn.execute(
                f"SELECT t::text FROM {table} t ORDER BY 1".encode())]
                for table in ("users", "oauth_clients", "oauth_auth_codes", "oauth_refresh_tokens",
                              "invoices")}

    def run_rows(self) -> dict[str, int]:
        """Rows any harness run left (``cc-`` names) in the four tables."""
        with self.db.connect() as conn:
            counts = {}
            for table, column in RUN_TABLES.items():
                row = conn.execute(f"SELECT count(*) FROM {table} WHERE starts_with({column}, 'cc-')".encode()
                                   ).fetchone()
                counts[table] = int(row[0]) if row else 0
            return counts


def with_password(url: str, password: str = PASSWORD) -> str:
    """``postgresql://postgres:<password>@/<db>?host=<socket dir>`` for an embedded server's URL."""
    params = conninfo.conninfo_to_dict(url)
    return f"postgresql://{params['user']}:{password}@/{params['dbname']}?host={params['host']}"


@pytest.fixture(scope="module")
def staging(request: pytest.FixtureRequest) -> Iterator[Staging]:
    # Under root the server runs as another user: its data directory must not be under
    # pytest's 0700 tmp_path (new_data_dir is what the pg_data_dir fixture uses).
    db = connect(data_dir=new_data_dir(request.config))  # embedded: started, schema created
    try:
        with db.connect() as conn:
            # Someone else's rows, named as the notebooks once named theirs (which they then
            # deleted by name, cascading to codes and tokens).
            conn.execute("INSERT INTO users (id) VALUES ('nb-user')")
            conn.execute("INSERT INTO oauth_clients (client_id) VALUES ('nb-pkce-client')")
            conn.execute(
                "INSERT INTO oauth_refresh_tokens (token_id, client_id, user_id, scope, expires_at, "
                "family_id) VALUES ('staging-token', 'nb-pkce-client', 'nb-user', 'openid', "
                "'2030-01-01T00:00:00Z', 'staging-token')")
            conn.execute(
                "INSERT INTO oauth_auth_codes (code, client_id, user_id, redirect_uri, scope, expires_at, "
                "used_at, refresh_token_id) VALUES ('staging-code', 'nb-pkce-client', 'nb-user', "
                "'https://staging.example/cb', 'openid', '2030-01-01T00:00:00Z', "
                "'2029-12-31T23:55:00Z', 'staging-token')")
            conn.execute("CREATE TABLE invoices (id integer PRIMARY KEY, "
                         "user_id text NOT NULL REFERENCES users(id), cents integer NOT NULL)")
            conn.execute("INSERT INTO invoices VALUES (1, 'nb-user', 4200)")
        yield Staging(db, with_password(db.url))
    finally:
        db.close()


def evidence(out: Path) -> Path:
    (path,) = out.glob("*.ipynb")
    return path


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# -- 1. rows: only the run's own, all removed --------------------------------------------


def test_a_notebook_leaves_someone_elses_rows_alone_and_none_of_its_own(
        staging: Staging, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = staging.dump()
    assert main(["notebook", "01", "--database-url", staging.url, "--out", str(tmp_path)]) == 0
    assert "passed  01_pkce" in capsys.readouterr().out
    assert staging.run_rows() == dict.fromkeys(RUN_TABLES, 0)
    assert staging.dump() == before
    # The notebook's last cell shows the same: nothing of its run left.
    run = nbformat.read(evidence(tmp_path), as_version=4)
    last = run.cells[-1]
    assert last.source.startswith("scope.cleanup()")
    assert "rows of this run" in last.outputs[-1]["data"]["text/plain"]


def test_a_notebook_that_fails_half_way_still_removes_its_rows(
        staging: Staging, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The race notebook on ``naive`` stops at its first race; the kernel's exit removes the run's rows."""
    before = staging.dump()
    status = main(["notebook", "04", "--target", "naive", "-p", f"database_url={staging.url}",
                   "-p", f"pepper={PEPPER}", "--out", str(tmp_path), *SMALL])
    assert status == EXIT_VIOLATED
    assert "FAILED  04_concurrent_claim" in capsys.readouterr().err
    assert staging.run_rows() == dict.fromkeys(RUN_TABLES, 0)
    assert staging.dump() == before


# -- 2. secrets: never in the evidence --------------------------------------------------


def test_the_database_password_is_not_written_into_the_evidence(staging: Staging, tmp_path: Path) -> None:
    assert main(["notebook", "01", "--database-url", staging.url, "--out", str(tmp_path)]) == 0
    text = evidence(tmp_path).read_text()
    assert PASSWORD not in text
    assert "database_url" not in nbformat.reads(text, as_version=4).metadata["papermill"]["parameters"]


def test_url_and_pepper_given_as_parameters_go_to_the_kernel_environment_only(
        staging: Staging, tmp_path: Path) -> None:
    status = main(["notebook", "04", "--target", "naive", "-p", f"database_url={staging.url}",
                   "-p", f"pepper={PEPPER}", "--out", str(tmp_path), *SMALL])
    assert status == EXIT_VIOLATED  # it ran (on that database, with that pepper) and caught naive
    text = evidence(tmp_path).read_text()
    assert PASSWORD not in text and PEPPER not in text
    assert set(nbformat.reads(text, as_version=4).metadata["papermill"]["parameters"]) == {
        "target", "racers", "codes"}


def test_two_different_database_urls_are_a_usage_error(staging: Staging, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["notebook", "01", "--database-url", staging.url, "-p", "database_url=postgresql:///other",
                   "--out", str(tmp_path)])
    assert status == EXIT_USAGE
    assert "two databases" in one_line(capsys.readouterr().err)


# -- 3. exit status 2 for what is not a finding -------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["--target", "os:system"], "factory rejected its arguments"),
    (["--target", "no-such-target"], "unknown target 'no-such-target'"),
    (["-p", "racers=0"], "racers must be a whole number >= 2, got 0"),
    (["-p", "racers=many"], "racers wants a whole number, got 'many'"),
    (["-p", "racer=8"], "no chosen notebook has the parameter racer"),
    (["-p", "codes"], "--param wants KEY=VALUE"),
])
def test_a_setup_error_is_exit_2_with_one_line_before_any_kernel_starts(
        staging: Staging, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        says: str) -> None:
    before = staging.dump()
    status = main(["notebook", "04", "--database-url", staging.url, "--out", str(tmp_path), *args])
    assert status == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith("harness: error: ") and says in line, line
    assert PASSWORD not in line
    assert not list(tmp_path.glob("*.ipynb"))  # nothing ran
    assert staging.dump() == before


@pytest.mark.parametrize("which", ["unreachable", "no such database", "no schema"])
def test_a_database_the_notebooks_cannot_use_is_exit_2_with_one_line(
        staging: Staging, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str) -> None:
    if which == "unreachable":
        url = f"postgresql://someone:{PASSWORD}@127.0.0.1:1/staging"
        says = "cannot reach PostgreSQL at 127.0.0.1:1/staging"
    else:
        dbname = "no_such_db" if which == "no such database" else "empty_db"
        if which == "no schema":
            with staging.db.connect() as conn:
                conn.execute("DROP DATABASE IF EXISTS empty_db")
                conn.execute("CREATE DATABASE empty_db")
        params = conninfo.conninfo_to_dict(staging.url)
        url = f"postgresql://postgres:{PASSWORD}@/{dbname}?host={params['host']}"
        says = "does not exist" if which == "no such database" else "harness db migrate"
    assert main(["notebook", "01", "--database-url", url, "--out", str(tmp_path)]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert says in line and PASSWORD not in line, line
    assert not list(tmp_path.glob("*.ipynb"))
    if which == "no schema":  # the harness never creates a schema unasked
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_schema = 'public'").fetchone() == (0,)


def test_an_unwritable_evidence_directory_is_exit_2_with_one_line(
        staging: Staging, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notebook", "01", "--database-url", staging.url, "--out", "/proc/x"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "cannot write the evidence to /proc/x" in line, line


def test_a_setup_error_raised_inside_the_notebook_is_exit_2(
        staging: Staging, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the parameter check before papermill missing, the kernel's ``SetupError`` still means 2, not 1."""
    monkeypatch.setattr(walkthrough, "check_parameters", lambda **values: None)
    status = main(["notebook", "04", "--database-url", staging.url, "--out", str(tmp_path),
                   "-p", "racers=0"])
    assert status == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "04_concurrent_claim: parameter racers must be a whole number >= 2, got 0" in line, line
    run = nbformat.read(evidence(tmp_path), as_version=4)
    (error,) = [o for c in run.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    assert error["ename"] == "SetupError"
    assert staging.run_rows() == dict.fromkeys(RUN_TABLES, 0)


def test_a_failed_cell_means_1_unless_the_notebook_could_not_run() -> None:
    assert exit_status("AssertionError") == EXIT_VIOLATED
    assert exit_status("KeyError") == EXIT_VIOLATED
    assert exit_status("SetupError") == EXIT_USAGE
