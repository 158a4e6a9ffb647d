"""/readyz when no core answers: 503, and nothing claimed about the rate limits (the other
states are tested with a core: tests/integration/test_sqlite_reads.py, test_workers.py,
test_rate_limits.py). The bridge starts anyway once it has waited KYMA_BRIDGE_CORE_WAIT_SECONDS
for a core, and says so (waiting for one that comes: tests/integration/test_bridge_start.py)."""

from __future__ import annotations

import logging
import pathlib

import httpx
import pytest

from core_service.settings import Settings
from http_bridge.app import create_app
from tests.fakes.pg_cluster import free_port


async def test_no_core_is_unavailable_and_the_limits_unknown(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{free_port()}"
    settings = Settings(
        data_dir=tmp_path, metrics_port=0, core_address=address, bridge_core_wait_seconds=0.2
    )
    app = create_app(settings)
    with caplog.at_level(logging.INFO, logger="http_bridge.core_client"):
        async with app.router.lifespan_context(app):
            assert f"no core at {address} answered within 0.2 s" in caplog.text
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kyma.test") as http:
                reply = await http.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {
        "status": "unavailable",
        "core": "unavailable",
        "rate_limits": "unknown",
    }
