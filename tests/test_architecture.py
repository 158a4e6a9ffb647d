"""The shape of the code, checked: the import contract (import-linter, configured in
pyproject.toml: no cycles between packages, the domain free of gRPC and protobuf, the bridge
free of the core's business logic, the serving path free of the fault-injecting simulator)
and the types (mypy, configured in pyproject.toml, over core_service and http_bridge)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(pathlib.Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: run ./scripts/setup --dev")
    return found


def test_import_contract() -> None:
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_types() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
