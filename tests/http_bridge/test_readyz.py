"""/readyz when no core answers: 503, and nothing claimed about the rate limits (the other
states are tested with a core: tests/integration/test_sqlite_reads.py, test_workers.py,
test_rate_limits.py)."""

from __future__ import annotations

import pathlib

import httpx

from core_service.settings import Settings
from http_bridge.app import create_app
from tests.fakes.pg_cluster import free_port


async def test_no_core_is_unavailable_and_the_limits_unknown(tmp_path: pathlib.Path) -> None:
    settings = Settings(data_dir=tmp_path, metrics_port=0, core_address=f"127.0.0.1:{free_port()}")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kyma.test") as http:
            reply = await http.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {
        "status": "unavailable",
        "core": "unavailable",
        "rate_limits": "unknown",
    }
