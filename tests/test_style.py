"""The code keeps one style: ruff's lint rules and formatter, as configured in pyproject.toml."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["core_service", "http_bridge", "tests", "scripts"]


def _ruff() -> str:
    found = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
        "ruff"
    )
    if found is None:
        pytest.fail("ruff is not installed: run ./scripts/setup")
    return found


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run([_ruff(), *command, *SOURCES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
