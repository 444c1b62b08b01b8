"""``harness lab``: JupyterLab serves the notebooks with the database running, and stops cleanly."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from conftest import embedded_env, free_port

from harness.embedded import EmbeddedServer, live_server_processes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))




def wait_for(url: str, deadline_s: float, proc: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"harness lab exited early with {proc.returncode}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {deadline_s} s")


@pytest.fixture
def data_dir(pg_data_dir: Path) -> Iterator[Path]:
    path = pg_data_dir.resolve()
    yield path
    if EmbeddedServer(path).is_harness_cluster():
        EmbeddedServer(path).stop(force=True)


def lab_env(data_dir: Path, tmp_path: Path) -> dict[str, str]:
    env = embedded_env(data_dir)
    # JupyterLab's own state (workspaces, settings, runtime files) stays in the test's directory.
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                 "JUPYTERLAB_SETTINGS_DIR"):
        env[name] = str(tmp_path / name.lower())
    return env


def test_lab_serves_the_notebooks_with_the_database_in_the_kernels_env(
    data_dir: Path, tmp_path: Path
) -> None:
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"token {token}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "lab", "--port", str(port), "--no-browser", "--token", token],
        env=lab_env(data_dir, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    spawned: list[psutil.Process] = []
    try:
        lab = wait_for(f"{base}/lab?token={token}", 90, proc)
        assert lab.status_code == 200
        assert "JupyterLab" in lab.text

        listing = httpx.get(f"{base}/api/contents/", headers=auth, timeout=10)
        assert listing.status_code == 200
        names = {item["name"] for item in listing.json()["content"]}
        # The folder a reviewer opens holds the notebooks alone: nbval's session and sanitiser
        # live in harness/testing/nbval.py and tests/nbval/, not beside them.
        assert names == set(NOTEBOOKS), names
        assert len(NOTEBOOKS) == 7
        one = httpx.get(f"{base}/api/contents/{NOTEBOOKS[-1]}", headers=auth, timeout=10)
        assert one.status_code == 200 and one.json()["type"] == "notebook"
        assert httpx.get(f"{base}/api/contents/", timeout=10).status_code == 403  # the token is required

        # A kernel started by the server inherits the database URL, and that database answers.
        kernel = httpx.post(f"{base}/api/kernels", headers=auth, json={"name": "python3"}, timeout=30)
        assert kernel.status_code == 201, kernel.text
        spawned = psutil.Process(proc.pid).children(recursive=True)
        kernels = [p for p in spawned if "ipykernel_launcher" in " ".join(p.cmdline())]
        assert kernels, [p.cmdline() for p in spawned]
        url = kernels[0].environ().get("HARNESS_DATABASE_URL")
        assert url and url.startswith("postgresql://"), url
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("claimcheck",)
            served = conn.execute("SHOW data_directory").fetchone()
        assert served and Path(served[0]).resolve() == data_dir  # the server this command started
        assert EmbeddedServer(data_dir).status().running
    finally:
        spawned = spawned or psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert status == 0, output
    assert "JupyterLab stopped" in output
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "processes left behind"
    # This command started the embedded server, so it stopped it.
    assert not EmbeddedServer(data_dir).status().running
    assert not live_server_processes(data_dir)


def test_lab_reuses_a_running_database_and_leaves_it_running(data_dir: Path, tmp_path: Path) -> None:
    env = lab_env(data_dir, tmp_path)
    started = subprocess.run([sys.executable, "-m", "harness", "db", "start"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    port, token = free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "lab", "--port", str(port), "--no-browser", "--token", token],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", 90, proc).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert status == 0, output
    assert "the database was left running" in output
    assert EmbeddedServer(data_dir).status().running


def test_lab_refuses_a_missing_notebook_directory(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "harness", "lab", "--no-browser",
                           "--notebook-dir", str(tmp_path / "nowhere")],
                          env={**os.environ, "HARNESS_DATABASE_URL": "postgresql://unused@/x"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no notebook directory" in done.stderr
    assert done.stdout == ""  # nothing started
