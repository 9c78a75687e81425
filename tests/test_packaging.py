"""The built wheel ships what users need (type marker, licence, every module) and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where setuptools finds each installed package (see [tool.setuptools] in pyproject.toml).
PACKAGE_DIRS = {
    "eggroll_opt": ROOT / "eggroll_opt",
    "eggroll_opt/integrations": ROOT / "integrations",
    "eggroll_opt/benchmarks": ROOT / "benchmarks",
}
# Left out of the copy that is built: caches, earlier build outputs and results of local runs.
NOT_SOURCES = shutil.ignore_patterns(
    ".*", "__pycache__", "build", "dist", "*.egg-info", "results", "bench-results"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel `pip wheel` builds from a clean copy of the source tree, as a user's pip would."""
    source = tmp_path_factory.mktemp("source") / "eggroll_opt"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
    )
    (path,) = out.glob("eggroll_opt-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def dist_info(wheel: zipfile.ZipFile) -> str:
    (folder,) = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" in name}
    return folder


def test_wheel_marks_the_package_as_typed(wheel: zipfile.ZipFile) -> None:
    assert "eggroll_opt/py.typed" in wheel.namelist()


def test_wheel_ships_the_apache_licence(wheel: zipfile.ZipFile) -> None:
    folder = dist_info(wheel)
    licence = wheel.read(f"{folder}/licenses/LICENSE").decode()
    assert licence == (ROOT / "LICENSE").read_text()
    assert licence.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    metadata = wheel.read(f"{folder}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()


def test_wheel_holds_every_module_of_the_three_packages(wheel: zipfile.ZipFile) -> None:
    expected = {
        f"{package}/{module.name}"
        for package, folder in PACKAGE_DIRS.items()
        for module in folder.glob("*.py")
    }
    assert "eggroll_opt/integrations/optuna.py" in expected
    assert "eggroll_opt/benchmarks/core.py" in expected
    shipped = {name for name in wheel.namelist() if name.endswith(".py")}
    assert shipped == expected


def test_wheel_has_nothing_but_the_package_and_its_metadata(wheel: zipfile.ZipFile) -> None:
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    assert top_level == {"eggroll_opt", dist_info(wheel)}
