"""Which transport carries an upstream request: the built-in demo model in process (`demo://`),
every other deployment over HTTP. All are httpx transports, injected by the composition root
(tests pass their own), and called directly: Kyma needs none of a client's cookies, redirects
or auth flows between it and an upstream, and skipping them is a large part of its speed.

Over HTTP, whole responses go through the fastest transport (aiohttp's), and streams through
httpx's own: when an upstream breaks a stream, httpx still hands over every byte that arrived
before the break, where aiohttp drops what it had buffered — and those are tokens a client
should get and is billed for.
"""

from __future__ import annotations

import httpx


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

    def for_url(self, url: str, *, stream: bool) -> httpx.AsyncBaseTransport:
        if url.startswith("demo://"):
            return self._demo
        return self._streaming if stream else self._http

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._streaming is not self._http:
            await self._streaming.aclose()
        await self._demo.aclose()
