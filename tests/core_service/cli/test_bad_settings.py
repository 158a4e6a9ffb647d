"""What an operator gets wrong stops Kyma at start-up with one line saying what and where —
not a traceback, and never a secret given: a setting it cannot use (named, its value not shown),
a catalogue it cannot read, a database it cannot reach or that refuses it (its password hidden),
a port another process holds. For `kyma serve` with several workers, `kyma serve core`, and
(settings) the admin and health commands alike."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tests.fakes.pg_cluster import free_port

BAD = "not-a-number-7f3"


def _kyma(tmp_path: pathlib.Path, *command: str, **settings: str) -> subprocess.CompletedProcess:
    """`kyma COMMAND` with two workers, ports of its own choosing, and `settings` (KYMA_…),
    on none of this machine's KYMA_ settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    env = {
        **base,
        "KYMA_DATA_DIR": str(tmp_path),
        "KYMA_WORKERS": "2",
        "KYMA_HTTP_PORT": "0",
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "core_service.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command",
    [["serve"], ["serve", "core"], ["serve", "bridge"], ["admin", "accounts", "list"], ["health"]],
)
def test_an_invalid_setting_is_named_without_a_traceback(
    command: list[str], tmp_path: pathlib.Path
) -> None:
    done = _kyma(tmp_path, *command, KYMA_BRIDGE_RELAY_STREAMS=BAD)
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
    done = _kyma(
        tmp_path,
        *command,
        KYMA_CATALOG=str(catalog),
        # A port of its own (not 0): the bridges then start beside the cores, not after them.
        KYMA_GRPC_PORT=str(free_port()),
        KYMA_BRIDGE_CORE_WAIT_SECONDS="300",
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
    done = _kyma(tmp_path, "serve", "core", KYMA_DATABASE_URL=url)
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
        done = _kyma(tmp_path, *command, **{setting: str(port)})
    assert done.returncode == 1
    assert f"kyma: cannot listen on 127.0.0.1:{port} {said}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
