"""Notebooks re-run with papermill (``harness notebook``): a broken property fails the run, defaults pass."""

from __future__ import annotations

import html
import re
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import papermill
import pytest
from conftest import embedded_env

from harness.cli import main
from harness.commands.notebook import NOTEBOOKS, execute, resolve
from harness.database import Database
from harness.embedded import EmbeddedServer, live_server_processes
from harness.history import History, Op
from harness.walkthrough import (
    Walk,
    code_to_show,
    left_aligned_html,
    matrix_figure,
    matrix_heatmap,
    matrix_rows,
    timelines,
)

pytestmark = pytest.mark.slow
RACE = NOTEBOOKS / "04_concurrent_claim.ipynb"
AT_REST = NOTEBOOKS / "05_hashing_at_rest.ipynb"
YOUR_SERVER = NOTEBOOKS / "06_your_server.ipynb"
SHIPPED_DESCRIPTION = NOTEBOOKS.parent / "examples" / "endpoints" / "harness-serve.toml"
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
    assert [p.name[:2] for p in resolve([])] == ["00", "01", "02", "03", "04", "05", "06"]
    assert resolve(["06"]) == [YOUR_SERVER]


def test_an_unknown_notebook_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notebook", "99"]) == 2
    assert "no single notebook matches '99'" in capsys.readouterr().err


# -- 06: your own server, black box --------------------------------------------------------------


def served_and_run_rows(db: Database) -> dict[str, int]:
    """Rows of harness serve's test clients and user (``claimcheck-…``) and of any run (``cc-…``)."""
    with db.connect() as conn:
        counts = {}
        for prefix in ("claimcheck-", "cc-"):
            for table, column in (("oauth_clients", "client_id"), ("users", "id"),
                                  ("oauth_auth_codes", "client_id"), ("oauth_refresh_tokens", "client_id")):
                row = conn.execute(f"SELECT count(*) FROM {table} WHERE starts_with({column}, %s)".encode(),
                                   (prefix,)).fetchone()
                counts[f"{table} {prefix}"] = int(row[0]) if row else 0
    return counts


def outputs_by_first_line(run: nbformat.NotebookNode) -> dict[str, list[dict[str, object]]]:
    return {c.source.splitlines()[0]: c.get("outputs", []) for c in run.cells
            if c.cell_type == "code" and c.source}


def text_of(outputs: list[dict[str, object]]) -> str:
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(str(o.get("text", "")))
        data = o.get("data")
        if isinstance(data, dict):
            parts.append(str(data.get("text/plain", "")) + str(data.get("text/markdown", "")))
    return "\n".join(parts)


def test_the_your_server_notebook_on_the_shipped_description_shows_naives_findings_and_passes(
        database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """papermill with ``target`` = the shipped description: the notebook serves naive itself, shows its
    findings, its assertions about the harness hold, and it leaves no row behind."""
    for name in ("CLAIMCHECK_SERVER", "CLAIMCHECK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    before = served_and_run_rows(database)
    out = tmp_path / "06.ipynb"
    execute(YOUR_SERVER, out, {"target": str(SHIPPED_DESCRIPTION), "server_target": "naive",
                               "racers": 4, "codes": 5}, env={"HARNESS_DATABASE_URL": database.url})
    run = nbformat.read(out, as_version=4)
    outputs = outputs_by_first_line(run)
    assert not [o for outs in outputs.values() for o in outs if o.get("output_type") == "error"]
    setup = text_of(outputs["%matplotlib inline"])
    assert "started here: harness serve --target naive" in setup
    (scan_cell,) = [outs for first, outs in outputs.items() if first.startswith("counts = ")]
    counts = text_of(scan_cell)
    assert "pkce.wrong-verifier" in counts and "critical" in counts  # naive's findings are shown
    (verdicts,) = [outs for first, outs in outputs.items() if first.startswith("rows = ")]
    text = text_of(verdicts)
    assert "race: no winner" in text or "race: double win" in text  # naive never passes a race
    rows = verdicts[-1]["data"]["text/plain"].splitlines()[2:]
    assert len(rows) == 6 and all(r.rstrip().endswith("holds") for r in rows), rows
    assert served_and_run_rows(database) == before  # the server's rows and the run's: all removed
    assert not [v for k, v in before.items() if v], before


def test_harness_notebook_06_with_a_target_name_serves_it(database: Database, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = served_and_run_rows(database)
    status = main(["notebook", "06", "--target", "naive", "--database-url", database.url,
                   "--out", str(tmp_path), "-p", "racers=4", "-p", "codes=5"])
    assert status == 0, capsys.readouterr().err
    assert "passed  06_your_server" in capsys.readouterr().out
    run = nbformat.read(evidence(tmp_path), as_version=4)
    assert run.metadata["papermill"]["parameters"]["target"] == "naive"
    setup = text_of(outputs_by_first_line(run)["%matplotlib inline"])
    assert "started here: harness serve --target naive" in setup
    assert served_and_run_rows(database) == before


def own_servers() -> set[int]:
    """Pids of the ``harness serve`` processes notebooks start (``python -m harness serve``)."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[1:4] == ["-m", "harness", "serve"]:
            found.add(proc.pid)
    return found


def test_the_your_server_notebook_that_fails_half_way_stops_its_server_and_removes_every_row(
        database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell fails after the server started and the in-process scan wrote its rows: the kernel's exit
    (Jupyter interrupts the kernel's process group, then shuts it down) still removes both."""
    for name in ("CLAIMCHECK_SERVER", "CLAIMCHECK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(YOUR_SERVER, as_version=4)
    (compare,) = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("s2 = None")]
    compare.source += "\nraise AssertionError('a property failed half way')"
    broken = tmp_path / "06_broken.ipynb"
    nbformat.write(notebook, broken)
    before, servers = served_and_run_rows(database), own_servers()
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(broken, tmp_path / "out.ipynb", {"racers": 4, "codes": 5},
                env={"HARNESS_DATABASE_URL": database.url})
    assert "a property failed half way" in str(failed.value.evalue)
    assert served_and_run_rows(database) == before
    assert own_servers() <= servers


# -- 04: what the race notebook shows (no database) ----------------------------------------------


def history_of(spans: dict[int, tuple[int, int, str]], code: int = 0) -> History:
    """A race history on one code: racer -> (start µs, end µs, outcome)."""
    history = History()
    for racer, (start, end, outcome) in spans.items():
        history.append(Op(racer, "invoke", "exchange", {"code": code}, start * 1000))
        history.append(Op(racer, outcome, "exchange", {"code": code}, end * 1000))  # type: ignore[arg-type]
    return history


def test_the_timelines_share_one_x_axis_and_their_alt_text_says_who_won() -> None:
    one = history_of({0: (0, 900, "ok"), 1: (50, 400, "fail")})
    many = history_of({0: (0, 4000, "ok"), 1: (30, 3000, "ok"), 2: (60, 500, "fail")})
    chart = timelines({"faithful": one, "naive": many}, code=0)
    left, right = chart.figure.axes[:2]
    assert left.get_xlim() == right.get_xlim()  # one µs scale: the short race is drawn short
    assert "faithful: code 0, 1 winner" in left.get_title()
    assert "naive: code 0, 2 winners" in right.get_title()
    assert "faithful, code 0: 2 racers; 1 winner (racer 0), 1 refused" in chart.alt
    assert "naive, code 0: 3 racers; 2 winners (racers 0, 1), 1 refused" in chart.alt
    data, metadata = chart._repr_mimebundle_()
    assert data["text/plain"] == chart.alt and metadata["image/png"]["alt"] == chart.alt
    assert data["text/html"].startswith('<img src="data:image/png;base64,')
    assert f'alt="{html.escape(chart.alt)}"' in data["text/html"]


def test_the_code_drawn_is_the_one_the_control_won_most_often() -> None:
    report = SimpleNamespace(
        stats={"target": "naive"}, winners=SimpleNamespace(summary={"keys": 10}, evidence=[
            {"code": 3, "problem": "won more than once", "wins": 2},
            {"code": 7, "problem": "won more than once", "wins": 4},
            {"code": 5, "problem": "won more than once", "wins": 4}]))
    code, why = code_to_show(report)
    assert code == 5 and "naive race won most often (4 winners" in why
    nobody = SimpleNamespace(stats={}, winners=SimpleNamespace(summary={"keys": 10}, evidence=[]))
    assert code_to_show(nobody)[0] == 5


def test_the_matrix_heatmaps_and_its_rows_round_alike() -> None:
    matrix = pd.DataFrame({
        "strategy": ["atomic", "naive"], "isolation": ["repeatable_read", "read_committed"],
        "double_wins": [0, 19], "no_winner": [0, 0], "serialization_failures": [113, 0],
        "serialization_per_code": [5.65, 0.0], "attempts_per_s": [1397, 1505],
        "raced_fraction": [1.0, 0.95], "verdict": ["pass", "double win"]})
    # 5.65 is 5.7 everywhere (pandas' own round would make it 5.6 in the table only).
    assert ">5.7<" in matrix_heatmap(matrix, "serialization_per_code").to_html()
    assert "5.7 at repeatable read" in matrix_figure(matrix).alt
    rows = matrix_rows(matrix)
    assert rows.iloc[0]["serialization failures per code (SQLSTATE 40001 ÷ codes)"] == 5.7
    assert rows["codes raced (%)"].tolist() == [100, 95]


def test_tables_align_their_text_columns_left_in_each_cells_own_style() -> None:
    walk = Walk("a walk")
    walk.note("codes won more than once", 0, 0)
    html_table = left_aligned_html(walk.table())
    assert html_table is not None
    left = 'style="text-align: left;"'
    assert f"<td {left}>codes won more than once</td>" in html_table
    assert f"<th {left}>action</th>" in html_table
    assert "<td>True</td>" in html_table  # a boolean column keeps the default alignment
    styled = left_aligned_html(pd.DataFrame({"verdict": ["holds"], "n": [1]}).style.set_uuid("t"))
    assert styled is not None and f'<td {left} id="T_t_row0_col0"' in styled
    assert '<td id="T_t_row0_col1" class="data row0 col1" >1</td>' in styled


def test_the_committed_race_notebook_gives_every_figure_alt_text_and_rounds_its_spreads() -> None:
    notebook = nbformat.read(RACE, as_version=4)
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert len(figures) == 3
    for output in figures:
        alt = output["metadata"]["image/png"]["alt"]
        assert len(alt) > 80 and output["data"]["text/plain"] == alt
        assert f'alt="{html.escape(alt)}"' in output["data"]["text/html"]
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
                     for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert not re.search(r"\d+\.\d{3,}", text), "a measured number printed with more than two decimals"
