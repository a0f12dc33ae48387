"""The wheel, built the way a user builds it, installs and runs in a fresh virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from services import __version__

ROOT = Path(__file__).resolve().parent.parent
# Never part of a clean checkout: local environment, generated code, build and tool output.
SKIP_AT_ROOT = {".git", ".venv", "volte", "build", "dist"}
SKIP_ANYWHERE = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

pytestmark = pytest.mark.slow


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")}
    if Path(directory) == ROOT:
        skipped |= SKIP_AT_ROOT & set(names)
    return skipped


def _run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_ignore)
    dist = tmp_path / "dist"
    # Build isolation on, as for a user: the hook runs with freshly installed build requirements.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("volte-*.whl")
    assert wheel.name == f"volte-{__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(
            archive.read(f"volte-{__version__}.dist-info/METADATA").decode()
        )
    assert {"volte/v1/state_pb2.py", "volte/v1/state_pb2.pyi", "volte/py.typed"} <= names
    assert {"services/cli.py", "loadgen/cli.py", "services/py.typed"} <= names
    assert not {n for n in names if n.startswith(("tests/", "proto/", "hatch_build"))}
    # The build hook states the grpcio the generated code needs.
    assert any(r.startswith("grpcio>=") for r in metadata.get_all("Requires-Dist") or [])

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin/python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    assert _run(venv / "bin/volte", "--version", cwd=tmp_path) == f"volte {__version__}\n"
    assert _run(venv / "bin/loadgen", "--version", cwd=tmp_path) == f"loadgen {__version__}\n"
    # cwd is tmp_path, so this imports the installed package, not the source tree.
    code = "import volte.v1.state_pb2, volte.v1.state_pb2_grpc; print(volte.v1.state_pb2.__file__)"
    assert str(venv) in _run(venv / "bin/python", "-c", code, cwd=tmp_path)
