"""The bridge's metrics middleware: requests counted by route template and status, each answer
timed, with its series looked up once and reused."""

from __future__ import annotations

from typing import Any

import pytest

from http_bridge.metrics import BridgeMetrics

pytestmark = pytest.mark.asyncio


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status = 404 if scope["path"].endswith("missing") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"x", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path}, receive, send)
    return sent


async def test_requests_counted_by_route_and_status() -> None:
    metrics = BridgeMetrics()
    app = metrics.middleware(_app)
    for path in ("/v1/chat/completions", "/v1/chat/completions", "/v1/models/a/b", "/missing"):
        sent = await _call(app, path)
        assert [m["type"] for m in sent] == ["http.response.start", *["http.response.body"] * 2]
    value = metrics.registry.get_sample_value
    assert (
        value("kyma_bridge_requests_total", {"route": "/v1/chat/completions", "status": "200"}) == 2
    )
    assert (
        value("kyma_bridge_requests_total", {"route": "/v1/models/{model}", "status": "200"}) == 1
    )
    assert value("kyma_bridge_requests_total", {"route": "other", "status": "404"}) == 1
    timed = {"route": "/v1/chat/completions"}
    assert value("kyma_bridge_request_duration_seconds_count", timed) == 2
    # Another middleware on the same metrics adds to the same series.
    await _call(metrics.middleware(_app), "/v1/chat/completions")
    assert (
        value("kyma_bridge_requests_total", {"route": "/v1/chat/completions", "status": "200"}) == 3
    )


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await BridgeMetrics().middleware(app)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]
