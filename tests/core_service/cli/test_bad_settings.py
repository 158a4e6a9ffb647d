"""A setting Kyma cannot use stops it at start-up with a message naming the setting and what is
wrong — not a traceback, and not the value given (it may be a secret): `kyma serve` with
several workers, `kyma serve core`, and the admin and health commands alike."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

BAD = "not-a-number-7f3"


@pytest.mark.parametrize(
    "command",
    [["serve"], ["serve", "core"], ["serve", "bridge"], ["admin", "accounts", "list"], ["health"]],
)
def test_an_invalid_setting_is_named_without_a_traceback(
    command: list[str], tmp_path: pathlib.Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    env = {
        **base,
        "KYMA_DATA_DIR": str(tmp_path),
        "KYMA_WORKERS": "2",
        "KYMA_BRIDGE_RELAY_STREAMS": BAD,
    }
    done = subprocess.run(
        [sys.executable, "-m", "core_service.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "kyma: the settings are not valid:" in done.stderr
    assert "bridge_relay_streams (KYMA_BRIDGE_RELAY_STREAMS): Input should be a valid integer" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr and BAD not in done.stderr + done.stdout
