"""The HTTP transport to upstreams: aiohttp's pooled client (C-accelerated parsing) behind the
httpx transport interface, so the rest of Kyma — and the demo model and test transports beside
it — see one interface. aiohttp's failures are translated into httpx's, whose meaning the
upstream client already sorts into retryable or not.

Bodies are handed over undecoded (aiohttp's decompression is off); httpx's response decodes
them by their content-encoding, as for any transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx


def _translate(exc: BaseException, request: httpx.Request) -> httpx.HTTPError:
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timed out", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(exc) or "connection closed early", request=request)
    return httpx.NetworkError(str(exc) or type(exc).__name__, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, self._request) from exc

    async def aclose(self) -> None:
        # A body read to its end frees the connection for reuse; one cut short closes it.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Idle connections are kept for `keepalive_seconds`: less than common servers' own idle
    limits (uvicorn's 5 s), so a connection is rarely reused just as the server drops it."""

    def __init__(self, *, max_connections: int = 2000, keepalive_seconds: float = 4.0) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop it belongs to.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_seconds,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        for attempt in (1, 2):
            try:
                response = await self._client().request(
                    request.method,
                    str(request.url),
                    data=request.content,
                    headers=request.headers,
                    timeout=timeout,
                    allow_redirects=False,
                )
                break
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled connection the server had closed while it was idle (before any
                # answer): once on a fresh connection, so a healthy upstream's keep-alive
                # policy never shows as its failure.
                if attempt == 2:
                    raise _translate(exc, request) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _translate(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response, request),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
