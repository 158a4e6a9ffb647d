"""CORS for browser pages on other origins: preflights answered for the configured origins,
API-key requests readable by them, never with credentials (the session cookie is the
console's alone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
import uvicorn

from http_bridge.app import create_app
from tests.conftest import bound_socket  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio
APP = "https://app.example"


@pytest_asyncio.fixture
async def bridge(kyma) -> AsyncIterator[str]:
    """A second bridge on the running core, allowing one other origin."""
    settings = kyma.settings.model_copy(
        update={
            "core_address": kyma.grpc_target,
            "cors_allowed_origins": f"{APP}, https://b.example",
        }
    )
    sock = bound_socket()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


def _preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os",
    }


async def test_preflights_and_key_requests_from_allowed_origins(kyma, bridge, account) -> None:
    async with httpx.AsyncClient(base_url=bridge) as http:
        preflight = await http.options("/v1/chat/completions", headers=_preflight(APP))
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": "kyma-demo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"origin": APP, "authorization": f"Bearer {account[1]}"},
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == APP
        exposed = reply.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed
        assert "access-control-allow-credentials" not in reply.headers
        refused = await http.options(
            "/v1/chat/completions", headers=_preflight("https://evil.example")
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers


async def test_without_configured_origins_a_preflight_is_refused_not_405(kyma) -> None:
    async with kyma.http() as http:
        reply = await http.options("/v1/models", headers=_preflight(APP))
    assert reply.status_code == 400 and "access-control-allow-origin" not in reply.headers
