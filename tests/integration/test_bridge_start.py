"""A bridge that starts before its core (`kyma serve bridge` and `kyma serve core` started
together, as compose and Kubernetes do) waits for the core before it says it listens: a request
that arrives meanwhile waits in the socket's queue and is answered once the core is up, rather
than getting a 503. One that waits longer than KYMA_BRIDGE_CORE_WAIT_SECONDS serves anyway
(tests/http_bridge/test_readyz.py)."""

from __future__ import annotations

import asyncio
import pathlib
import signal

import httpx

from tests.fakes.cluster import spawn_logged
from tests.fakes.pg_cluster import free_port
from tests.fakes.processes import stop_process
from tests.fakes.waiting import LIVENESS, until

COMMON = {
    "KYMA_ADMIN_TOKEN": "admin-token-bridge-start",
    "KYMA_BRIDGE_TOKEN": "bridge-start",
    "KYMA_METRICS_PORT": "0",
}


async def _until_logged(log: pathlib.Path, text: str) -> None:
    async def logged() -> bool:
        return log.exists() and text in log.read_text(errors="replace")

    await until(logged, f"{text!r} in {log}")


async def test_a_bridge_started_before_its_core_waits_for_it(tmp_path: pathlib.Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    bridge = await spawn_logged(
        "bridge",
        tmp_path / "bridge",
        {
            **COMMON,
            "KYMA_CORE_ADDRESS": f"127.0.0.1:{grpc_port}",
            "KYMA_HTTP_PORT": str(http_port),
            # Far longer than this test takes: only the core's start ends the wait.
            "KYMA_BRIDGE_CORE_WAIT_SECONDS": "300",
        },
    )
    core = None
    try:
        await _until_logged(tmp_path / "bridge" / "bridge.log", "waiting up to 300 s for a core")
        assert bridge.stdout is not None
        # It has not said it listens (it cannot say so until the wait ends, which needs a core).
        reading = asyncio.ensure_future(bridge.stdout.readline())
        await asyncio.sleep(0.2)
        assert not reading.done(), reading.result()
        async with httpx.AsyncClient(timeout=LIVENESS) as http:
            # Sent while no core runs: it waits in the bridge's queue, not for a 503.
            early = asyncio.ensure_future(http.get(f"http://127.0.0.1:{http_port}/readyz"))
            await asyncio.sleep(0.2)
            assert not early.done(), early.result()
            core = await spawn_logged(
                "core", tmp_path / "core", {**COMMON, "KYMA_GRPC_PORT": str(grpc_port)}
            )
            line = (await asyncio.wait_for(reading, LIVENESS)).decode()
            assert line.startswith(f"kyma bridge listening on http://127.0.0.1:{http_port}"), line
            reply = await early
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "ready"
            # And the inference path answers at once, in OpenAI's dialect.
            models = await http.get(f"http://127.0.0.1:{http_port}/v1/models")
            assert models.status_code == 401, models.text
            assert models.json()["error"]["type"] == "invalid_request_error"
        assert "no core at" not in (tmp_path / "bridge" / "bridge.log").read_text()
    finally:
        await stop_process(bridge, LIVENESS)
        if core is not None:
            await stop_process(core, LIVENESS)


async def test_a_bridge_waiting_for_its_core_stops_when_asked(tmp_path: pathlib.Path) -> None:
    """SIGTERM ends the wait (as when `kyma serve` stops a bridge because its core failed to
    start): the bridge does not sit out KYMA_BRIDGE_CORE_WAIT_SECONDS first."""
    bridge = await spawn_logged(
        "bridge",
        tmp_path,
        {
            **COMMON,
            "KYMA_CORE_ADDRESS": f"127.0.0.1:{free_port()}",
            "KYMA_HTTP_PORT": str(free_port()),
            "KYMA_BRIDGE_CORE_WAIT_SECONDS": "300",  # far longer than the liveness bound
        },
    )
    try:
        await _until_logged(tmp_path / "bridge.log", "waiting up to 300 s for a core")
        bridge.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridge.wait(), LIVENESS) in (0, -signal.SIGTERM)
        assert "no core at" not in (tmp_path / "bridge.log").read_text()
    finally:
        await stop_process(bridge, LIVENESS)
