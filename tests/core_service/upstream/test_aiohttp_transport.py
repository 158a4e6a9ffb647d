"""The aiohttp transport keeps httpx's contract: responses, and failures as httpx errors."""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest

from core_service.upstream.aiohttp_transport import AiohttpTransport

pytestmark = pytest.mark.asyncio


def chat(url: str, timeout: float = 5) -> httpx.Request:
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    return httpx.Request(
        "POST",
        url,
        content=body,
        headers={"content-type": "application/json"},
        extensions={"timeout": {"connect": 1, "read": timeout, "write": 1, "pool": 1}},
    )


async def test_relays_a_response_and_reuses_the_connection(upstream) -> None:
    transport = AiohttpTransport()
    try:
        for _ in range(3):
            response = await transport.handle_async_request(
                chat(f"{upstream.base_url}/chat/completions")
            )
            body = orjson.loads(await response.aread())
            await response.aclose()
            assert response.status_code == 200 and body["usage"]["completion_tokens"] == 3
            assert response.headers["content-type"].startswith("application/json")
    finally:
        await transport.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = AiohttpTransport()
    try:
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(
                chat(f"http://127.0.0.1:{port}/v1/chat/completions")
            )
    finally:
        await transport.aclose()


async def test_silence_is_a_read_timeout(upstream) -> None:
    await upstream.control(hang_rate=1.0)
    transport = AiohttpTransport()
    try:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(
                chat(f"{upstream.base_url}/chat/completions", timeout=0.2)
            )
    finally:
        await transport.aclose()


async def test_error_statuses_pass_through(upstream) -> None:
    await upstream.control(error_rate=1.0, error_status=503)
    transport = AiohttpTransport()
    try:
        response = await transport.handle_async_request(
            chat(f"{upstream.base_url}/chat/completions")
        )
        assert response.status_code == 503 and orjson.loads(await response.aread())["error"]
        await response.aclose()
    finally:
        await transport.aclose()
