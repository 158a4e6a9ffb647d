"""`kyma health`: what the image's HEALTHCHECK runs, against a running core and bridge."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

from core_service.cli.health import served_here
from tests.conftest import Kyma
from tests.fakes.pg_cluster import free_port


async def health(*args: str, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core_service.cli.main",
        "health",
        *args,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_health_says_whether_core_and_bridge_answer(kyma: Kyma) -> None:
    grpc_port = kyma.grpc_target.rsplit(":", 1)[1]
    http_port = kyma.http_url.rsplit(":", 1)[1]
    ports = {"KYMA_GRPC_PORT": grpc_port, "KYMA_HTTP_PORT": http_port}
    assert await health("all", KYMA_GRPC_HOST="0.0.0.0", **ports) == (
        0,
        "core: ok\nbridge: ok\n",
    )
    code, out = await health("bridge", KYMA_HTTP_PORT=str(free_port()))
    assert code == 1 and out.startswith("bridge: no answer from http://127.0.0.1:")
    code, out = await health("core", KYMA_GRPC_PORT=str(free_port()))
    assert code == 1 and "core: no answer on 127.0.0.1:" in out and "UNAVAILABLE" in out


def test_without_a_part_it_checks_what_pid_1_serves(tmp_path: pathlib.Path) -> None:
    cmdline = tmp_path / "cmdline"
    for command, parts in (
        (b"/opt/kyma/bin/python\0/opt/kyma/bin/kyma\0serve\0core\0", ("core",)),
        (b"/opt/kyma/bin/kyma\0serve\0bridge\0", ("bridge",)),
        (b"/opt/kyma/bin/kyma\0serve\0", ("core", "bridge")),
        (b"/sbin/init\0", ("core", "bridge")),
    ):
        cmdline.write_bytes(command)
        assert served_here(cmdline) == parts
    assert served_here(tmp_path / "missing") == ("core", "bridge")
