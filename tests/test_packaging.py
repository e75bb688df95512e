"""The built wheel works outside the repository: spaces and data ship inside it, and a search runs."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dsearch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and installed (without dependencies) into a folder outside the repo."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w",
         str(root / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheels = list((root / "dist").glob("dsearch-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "dsearch/search/spaces/mobile.yaml" in names and "dsearch/data/fashion_mnist_subset.npz" in names
    target = root / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])],
        capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return target


def _dsearch(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, "-m", "dsearch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_wheel_imports_from_its_own_folder(installed: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run([sys.executable, "-c", "import dsearch; print(dsearch.__file__)"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert Path(out.stdout.strip()).is_relative_to(installed)


def test_wheel_lists_builtin_spaces(installed: Path, tmp_path: Path) -> None:
    out = _dsearch(installed, tmp_path, "spaces")
    assert out.returncode == 0, out.stderr
    assert "mobile" in out.stdout and "residual" in out.stdout


def test_wheel_version(installed: Path, tmp_path: Path) -> None:
    out = _dsearch(installed, tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"dsearch {dsearch.__version__}"


def test_wheel_runs_a_tiny_search(installed: Path, tmp_path: Path) -> None:
    out = _dsearch(installed, tmp_path, "run", "--space", "residual", "--budget-mflops", "5", "--n-trials", "1",
                   "--epochs", "1", "--train-subset", "256", "--batch-size", "64", "--quiet", "--no-finals")
    assert out.returncode == 0, out.stderr
    assert "1 trained" in out.stdout
    assert (tmp_path / "studies" / "default" / "study.db").is_file()
