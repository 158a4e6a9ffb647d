"""The aiohttp transport keeps httpx's contract: responses, and failures as httpx errors."""

from __future__ import annotations

import asyncio
import socket

import httpx
import orjson
import pytest

from core_service.upstream.aiohttp_transport import AiohttpTransport

pytestmark = pytest.mark.asyncio

# How long a test waits for what must happen before it calls it broken.
LIVENESS_S = 10.0


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


async def _broken(upstream, transport: AiohttpTransport):
    await upstream.control(drop_stream_after=3)
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    return await transport.send(
        f"{upstream.base_url}/chat/completions",
        body,
        {"content-type": "application/json"},
        (1.0, 5.0),
    )


def _events(received: bytes) -> list[bytes]:
    return [event for event in received.split(b"\n\n") if event]


async def test_a_broken_stream_hands_over_every_byte_received_before_the_break(upstream) -> None:
    transport = AiohttpTransport()
    try:
        reply = await _broken(upstream, transport)
        assert reply.status == 200
        # Read nothing until the break itself has arrived: every byte before it is then
        # waiting in aiohttp's reader, which learns of the break before it hands them over.
        content = reply._response.content  # type: ignore[attr-defined]
        async with asyncio.timeout(LIVENESS_S):
            while content.exception() is None:
                await asyncio.sleep(0.01)
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async for piece in reply.pieces():
                received += piece
        await reply.aclose()
        assert len(_events(received)) == 4  # the role chunk and three tokens
        assert b"[DONE]" not in received
    finally:
        await transport.aclose()


async def test_a_broken_stream_read_as_it_comes_loses_nothing_either(upstream) -> None:
    transport = AiohttpTransport()
    try:
        reply = await _broken(upstream, transport)
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async for piece in reply.pieces():
                received += piece
        await reply.aclose()
        assert len(_events(received)) == 4
    finally:
        await transport.aclose()


async def test_send_reads_whole_answers_and_statuses(upstream) -> None:
    transport = AiohttpTransport()
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    try:
        for _ in range(2):
            reply = await transport.send(
                f"{upstream.base_url}/chat/completions",
                body,
                {"content-type": "application/json"},
                (1.0, 5.0),
            )
            answer = orjson.loads(await reply.read())
            await reply.aclose()
            assert reply.status == 200 and answer["usage"]["completion_tokens"] == 3
        await upstream.control(rate_limit_rate=1.0)
        reply = await transport.send(
            f"{upstream.base_url}/chat/completions",
            body,
            {"content-type": "application/json"},
            (1.0, 5.0),
        )
        await reply.read()
        await reply.aclose()
        assert reply.status == 429 and reply.header("Retry-After") is not None
    finally:
        await transport.aclose()
