"""Which transport carries an upstream request: the built-in demo model in process (`demo://`),
every other deployment over HTTP. All are httpx transports, injected by the composition root
(tests pass their own), and called directly: Kyma needs none of a client's cookies, redirects
or auth flows between it and an upstream, and skipping them is a large part of its speed.

The upstream client reads every answer as a `Reply`. A transport that can send one itself
(`DirectTransport`: aiohttp's, with its C parser, for whole responses and streams alike) is
called that way, without building httpx's request and response objects; any other httpx
transport's response is wrapped. Either way, a stream the upstream breaks still hands over
every byte that arrived before the break — those are tokens a client should get and is billed
for — and failures are raised as httpx's errors, which the client sorts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

import httpx

# connect, read (the longer of first token and idle): what a transport waits for at most.
Timeouts = tuple[float, float]


class Reply(Protocol):
    """An upstream's answer: its status and headers at once, its body whole or piece by piece
    (as the bytes arrive), failures raised as httpx errors."""

    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str | None: ...

    async def read(self) -> bytes: ...

    def pieces(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class DirectTransport(Protocol):
    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> Reply: ...


class HttpxReply:
    """A Reply read from any httpx transport's response (the demo model's, tests')."""

    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def read(self) -> bytes:
        return await self._response.aread()

    def pieces(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamTransports:
    def __init__(
        self,
        http: httpx.AsyncBaseTransport,
        *,
        streaming: httpx.AsyncBaseTransport | None = None,
        demo: httpx.AsyncBaseTransport,
    ) -> None:
        self._http = http
        self._streaming = streaming or http
        self._demo = demo
        # Decided once: which transports send directly (an isinstance check per request costs).
        self._direct = {
            id(t): t for t in (http, self._streaming, demo) if isinstance(t, DirectTransport)
        }

    def for_url(self, url: str, *, stream: bool) -> httpx.AsyncBaseTransport:
        if url.startswith("demo://"):
            return self._demo
        return self._streaming if stream else self._http

    async def send(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        *,
        stream: bool,
    ) -> Reply:
        """POST `body` to `url`; the answer once its headers have arrived."""
        transport = self.for_url(url, stream=stream)
        direct = self._direct.get(id(transport))
        if direct is not None:
            return await direct.send(url, body, headers, timeouts)
        connect, read = timeouts
        request = httpx.Request(
            "POST",
            url,
            content=body,
            headers=headers,
            extensions={
                "timeout": {"connect": connect, "read": read, "write": connect, "pool": connect}
            },
        )
        return HttpxReply(await transport.handle_async_request(request))

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._streaming is not self._http:
            await self._streaming.aclose()
        await self._demo.aclose()
