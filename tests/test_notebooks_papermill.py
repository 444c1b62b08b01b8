"""Notebooks re-run with papermill (``harness notebook``): a broken property fails the run, defaults pass."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest
from conftest import embedded_env

from harness.cli import main
from harness.commands.notebook import NOTEBOOKS, execute, resolve
from harness.database import Database
from harness.embedded import EmbeddedServer, live_server_processes

pytestmark = pytest.mark.slow
RACE = NOTEBOOKS / "04_concurrent_claim.ipynb"
AT_REST = NOTEBOOKS / "05_hashing_at_rest.ipynb"
#: Small sizes where the run fails at its first race anyway (with fewer than 8 racers a matrix
#: cell may not race at all, and the notebook rightly refuses to call that a pass).
SMALL = ["-p", "racers=4", "-p", "codes=10"]


def evidence(out: Path) -> Path:
    (path,) = out.glob("*.ipynb")
    return path


def test_the_race_notebook_fails_on_the_naive_target(database: Database, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["notebook", "04", "--target", "naive", "--database-url", database.url,
                   "--out", str(tmp_path), *SMALL])
    assert status == 1
    assert "FAILED  04_concurrent_claim" in capsys.readouterr().err
    # The executed notebook is kept as evidence and shows the broken property.
    run = nbformat.read(evidence(tmp_path), as_version=4)
    errors = [o for c in run.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert len(errors) == 1
    assert errors[0]["ename"] == "AssertionError"
    assert "codes won more than once" in errors[0]["evalue"]
    assert run.metadata["papermill"]["parameters"]["target"] == "naive"


def test_papermill_raises_on_the_naive_target(database: Database, tmp_path: Path) -> None:
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(RACE, tmp_path / "naive.ipynb", {"target": "naive", "racers": 4, "codes": 10},
                env={"HARNESS_DATABASE_URL": database.url})
    assert failed.value.ename == "AssertionError"


def test_the_race_notebook_passes_with_its_defaults(database: Database, tmp_path: Path) -> None:
    status = main(["notebook", "04", "--database-url", database.url, "--out", str(tmp_path)])
    assert status == 0
    run = nbformat.read(evidence(tmp_path), as_version=4)
    outputs = {c.source.splitlines()[0]: c.get("outputs", []) for c in run.cells if c.cell_type == "code"}
    assert not [o for outs in outputs.values() for o in outs if o.get("output_type") == "error"]
    (final,) = [outs for first, outs in outputs.items() if first.startswith("race_verdicts =")]
    rows = final[-1]["data"]["text/plain"].splitlines()[2:]  # below the header lines
    assert len(rows) == 4 and all(r.rstrip().endswith("holds") for r in rows), rows


def test_a_notebook_on_the_embedded_default_stops_the_server_it_started(
    tmp_path: Path, pg_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pg_data_dir, not tmp_path: under root the server runs as another user, which cannot
    # enter pytest's 0700 temporary directories.
    for key, value in embedded_env(pg_data_dir).items():
        monkeypatch.setenv(key, value)
    try:
        execute(AT_REST, tmp_path / "at_rest.ipynb", {})
        assert EmbeddedServer(pg_data_dir).status().initialised  # the notebook really used this one
        assert not EmbeddedServer(pg_data_dir).status().running
        assert not live_server_processes(pg_data_dir)
    finally:
        EmbeddedServer(pg_data_dir).stop()


def test_harness_notebook_on_the_embedded_default_keeps_one_server_for_the_run_and_stops_it(
    tmp_path: Path, pg_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in embedded_env(pg_data_dir).items():
        monkeypatch.setenv(key, value)
    try:
        assert main(["notebook", "05", "--out", str(tmp_path)]) == 0
        assert EmbeddedServer(pg_data_dir).status().initialised
        assert not EmbeddedServer(pg_data_dir).status().running
        assert not live_server_processes(pg_data_dir)
    finally:
        EmbeddedServer(pg_data_dir).stop()


def test_notebook_names_resolve_by_number_and_stem() -> None:
    assert resolve(["04"]) == [RACE]
    assert resolve(["05_hashing_at_rest"]) == [AT_REST]
    assert [p.name[:2] for p in resolve([])] == ["00", "01", "02", "03", "04", "05"]


def test_an_unknown_notebook_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notebook", "99"]) == 2
    assert "no single notebook matches '99'" in capsys.readouterr().err
