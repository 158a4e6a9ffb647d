"""A setting Kyma cannot use stops it at start-up with a message naming the setting and what is
wrong — not a traceback, and not the value given (it may be a secret): `kyma serve` with
several workers, `kyma serve core`, and the admin and health commands alike."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tests.fakes.pg_cluster import free_port

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


@pytest.mark.parametrize("command", [["serve"], ["serve", "core"]])
def test_a_catalogue_it_cannot_use_is_named_without_a_traceback(
    command: list[str], tmp_path: pathlib.Path
) -> None:
    """And the whole `kyma serve` stops promptly: its bridges, waiting for a core that will not
    come, are stopped rather than sitting out KYMA_BRIDGE_CORE_WAIT_SECONDS (set far beyond the
    liveness bound here)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models: [unclosed\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    env = {
        **base,
        "KYMA_DATA_DIR": str(tmp_path),
        "KYMA_WORKERS": "2",
        "KYMA_CATALOG": str(catalog),
        "KYMA_HTTP_PORT": "0",
        # A port of its own (not 0): the bridges then start beside the cores, not after them.
        "KYMA_GRPC_PORT": str(free_port()),
        "KYMA_METRICS_PORT": "0",
        "KYMA_BRIDGE_CORE_WAIT_SECONDS": "300",
    }
    done = subprocess.run(
        [sys.executable, "-m", "core_service.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"kyma: cannot read the catalogue {catalog}:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("database", "said"),
    [
        ("postgresql://kyma:pw-7f3@127.0.0.1:{port}/kyma", "cannot be reached:"),
        ("postgresql://postgres@127.0.0.1:5432/kyma_no_such_database", "refused the connection:"),
    ],
    ids=["unreachable", "no such database"],
)
def test_a_database_it_cannot_use_is_named_without_its_password(
    database: str, said: str, tmp_path: pathlib.Path
) -> None:
    url = database.format(port=free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    env = {
        **base,
        "KYMA_DATA_DIR": str(tmp_path),
        "KYMA_DATABASE_URL": url,
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "core_service.cli.main", "serve", "core"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    shown = url.replace(":pw-7f3@", ":***@")
    assert f"kyma: the database {shown} {said}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "pw-7f3" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("command", "setting", "said"),
    [
        (["serve"], "KYMA_HTTP_PORT", "(KYMA_HTTP_HOST, KYMA_HTTP_PORT): Address already in use"),
        (
            ["serve", "core"],
            "KYMA_GRPC_PORT",
            "(KYMA_GRPC_HOST, KYMA_GRPC_PORT): the port is taken",
        ),
    ],
)
def test_a_port_taken_is_named_without_a_traceback(
    command: list[str], setting: str, said: str, tmp_path: pathlib.Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
        env = {
            **base,
            "KYMA_DATA_DIR": str(tmp_path),
            "KYMA_WORKERS": "2",
            "KYMA_HTTP_PORT": "0",
            "KYMA_GRPC_PORT": "0",
            "KYMA_METRICS_PORT": "0",
            setting: str(port),
        }
        done = subprocess.run(
            [sys.executable, "-m", "core_service.cli.main", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"kyma: cannot listen on 127.0.0.1:{port} {said}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
