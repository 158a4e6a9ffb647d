"""One config file for both processes: `kyma serve core` and `kyma serve bridge`, started with
nothing but KYMA_CONFIG, both obey the gRPC port and the body limit it sets (the bridge once
kept its defaults, could not reach the core, and ignored the limit)."""

from __future__ import annotations

import asyncio
import os

import httpx
import orjson

from tests.conftest import UPSTREAM_KEY, write_catalog
from tests.fakes.cluster import spawn_kyma
from tests.fakes.pg_cluster import free_port


async def test_core_and_bridge_obey_one_config_file(upstream, tmp_path) -> None:
    grpc_port, http_port = free_port(), free_port()
    config = tmp_path / "kyma.yaml"
    config.write_text(
        f"""
data_dir: {tmp_path / "data"}
grpc_port: {grpc_port}
http_port: {http_port}
max_body_bytes: 4096
metrics_port: 0
bridge_metrics_port: 0
admin_token: admin-token-from-the-file
catalog: {write_catalog(tmp_path / "catalog.yaml", upstream)}
"""
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KYMA_")},
        "KYMA_CONFIG": str(config),
        "KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
    }
    core = await spawn_kyma(env, "core", stderr=asyncio.subprocess.DEVNULL)
    bridge = None
    try:
        line = (await asyncio.wait_for(core.stdout.readline(), 60)).decode()  # type: ignore[union-attr]
        assert line.strip().endswith(f":{grpc_port}"), line
        bridge = await spawn_kyma(env, "bridge", stderr=asyncio.subprocess.DEVNULL)
        line = (await asyncio.wait_for(bridge.stdout.readline(), 60)).decode()  # type: ignore[union-attr]
        assert line.strip().endswith(f":{http_port}"), line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as http:
            for _ in range(300):  # the bridge announces itself a moment before it listens
                try:
                    ready = await http.get("/readyz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            # Ready means the bridge reached the core on the port from the file.
            assert ready.status_code == 200, ready.text
            body = orjson.dumps(
                {"model": "test-model", "messages": [{"role": "user", "content": "x" * 5000}]}
            )
            refused = await http.post(
                "/v1/chat/completions",
                content=body,
                headers={"authorization": "Bearer ky_x", "content-type": "application/json"},
            )
            assert refused.status_code == 413
            assert "4096" in refused.json()["error"]["message"]
            small = await http.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": "Bearer ky_x"},
            )
            assert small.status_code == 401  # past the limit, on to the core, which refuses the key
    finally:
        for process in (bridge, core):
            if process is not None and process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 30)
