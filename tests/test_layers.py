"""The import contracts bite: a driver importing the other driver fails ``lint-imports``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ecoserve", "tuners", "devices", "twins", "traces", "eco_edge_infer")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--config",
            str(root / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        (
            "ecoserve/sim/governors.py",
            "import ecoserve.runtime.driver",
            "ecoserve.sim is not allowed",
        ),
        ("ecoserve/core/knobs.py", "import time", "ecoserve.core is not allowed to import time"),
        ("tuners/fixed.py", "import devices.base", "tuners is not allowed to import devices"),
    ],
)
def test_a_violation_breaks_a_contract(copy: Path, module: str, line: str, broken: str) -> None:
    with (copy / module).open("a") as fh:
        fh.write(f"\n{line}  # noqa: E402\n")
    result = _lint(copy)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout


def test_the_tree_as_it_is_keeps_every_contract(copy: Path) -> None:
    result = _lint(copy)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout
