"""The built-in demo model: an httpx transport that answers OpenAI requests in-process.

Plugged into an `httpx.AsyncClient`, it lets the gateway's ordinary upstream client reach a model
with no network and no separate process, so a fresh install answers requests out of the box and
exercises the same code path (HTTP status, JSON, SSE) as a real upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import orjson

from core_service.simulators.fake_model.http import (
    JsonReply,
    StreamReply,
    encode_sse,
    is_token_chunk,
)
from core_service.simulators.fake_model.http import answer as answer_request
from core_service.simulators.fake_model.model import FakeModel

Sleep = Callable[[float], Awaitable[Any]]

_JSON_HEADERS = {"content-type": "application/json"}
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class _PacedEventStream(httpx.AsyncByteStream):
    """SSE bytes produced one chunk at a time as the consumer reads, so closing the response stops
    generation; token chunks are spaced `interval` seconds apart."""

    def __init__(self, reply: StreamReply, interval: float, sleep: Sleep) -> None:
        self._reply = reply
        self._chunks: Iterator[dict[str, Any]] = reply.chunks
        self._interval = interval
        self._sleep = sleep
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if self._closed:
                return
            if self._interval and is_token_chunk(chunk):
                await self._sleep(self._interval)
                if self._closed:
                    return
            yield encode_sse(chunk, named=self._reply.named)
        if not self._closed and self._reply.end:
            yield self._reply.end

    async def aclose(self) -> None:
        self._closed = True
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class DemoTransport(httpx.AsyncBaseTransport):
    """Serves `POST .../chat/completions`, `.../completions`, `.../embeddings`, `.../responses`,
    `.../messages`, `.../messages/count_tokens` and `GET .../models[/{id}]` under any base URL,
    answering as whichever model the request names. Each transport has its own model (and so its
    own prompt cache)."""

    def __init__(
        self,
        *,
        tokens_per_second: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        model: FakeModel | None = None,
    ) -> None:
        if tokens_per_second < 0:
            raise ValueError("tokens_per_second must be >= 0")
        self._interval = 1.0 / tokens_per_second if tokens_per_second else 0.0
        self._sleep = sleep
        self._model = model if model is not None else FakeModel(listed_models=("kyma-demo",))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        reply = answer_request(self._model, request.method, request.url.path, body, api_root=None)
        if isinstance(reply, JsonReply):
            return httpx.Response(
                reply.status,
                headers=_JSON_HEADERS,
                content=orjson.dumps(reply.body),
                request=request,
            )
        return httpx.Response(
            200,
            headers=_SSE_HEADERS,
            stream=_PacedEventStream(reply, self._interval, self._sleep),
            request=request,
        )
