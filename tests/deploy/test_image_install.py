"""The container image's install steps (deploy/docker/install.sh, what the Dockerfile runs) work in a
clean virtualenv: meshd's CLI and the Envoy binary run from it. No Docker engine is needed, but a full
pip install into a fresh virtualenv takes about a minute: not a unit test."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "docker" / "install.sh"
DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_copies() -> list[str]:
    """The repository paths the build stage copies (COPY <src...> <dest>, without --from)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


def test_dockerfile_runs_the_install_script_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert "RUN sh /src/deploy/docker/install.sh /src /opt/meshd" in text
    assert len(re.findall(r"^FROM ", text, flags=re.M)) == 2  # multi-stage
    assert re.search(r"^USER 1337:1337$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["meshd"\]$', text, flags=re.M)
    assert "deploy/docker/install.sh" in dockerfile_copies()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Run install.sh on a build context holding exactly what the Dockerfile copies."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    for source in dockerfile_copies():
        target = context / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / source, target)
    venv = work / "opt-meshd"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run(
        ["sh", str(context / "deploy/docker/install.sh"), str(context), str(venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return venv


def test_meshd_cli_runs_from_the_image_virtualenv(installed: pathlib.Path) -> None:
    out = subprocess.run([installed / "bin" / "meshd", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("serve", "agent"):
        assert command in out.stdout
    # the installed package, not this checkout
    where = subprocess.run(
        [installed / "bin" / "python", "-c", "import meshd; print(meshd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert where.stdout.startswith(str(installed)), where.stdout


def test_envoy_runs_from_the_image_virtualenv(installed: pathlib.Path) -> None:
    out = subprocess.run([installed / "bin" / "envoy", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"version: \w+/1\.\d+\.\d+", out.stdout), out.stdout


def test_install_fails_loudly_on_a_broken_source(tmp_path: pathlib.Path) -> None:
    run = subprocess.run(
        ["sh", str(SCRIPT), str(tmp_path / "missing"), str(tmp_path / "venv")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
