"""The HTTP transport to upstreams: aiohttp's pooled client (C-accelerated parsing). The upstream
client calls it directly (`send`, a `Reply`: no httpx objects on the way); it also keeps the
httpx transport interface, for the prober and anything else that speaks httpx. aiohttp's
failures are translated into httpx's, whose meaning the upstream client already sorts into
retryable or not.

A stream the upstream breaks still yields every byte that arrived before the break: aiohttp's
reader raises the connection's error before handing over what it had buffered, so the reply
takes that rest from the reader itself first (`_salvage`; aiohttp is pinned, and
tests/core_service/upstream/test_aiohttp_transport.py proves it for the pinned version).

Through `send`, bodies are decoded by aiohttp (content-encoding); through the httpx interface
they are handed over undecoded and httpx's response decodes them, as for any transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from yarl import URL

from core_service.upstream.transports import Reply, Timeouts


def _translate(exc: BaseException, request: httpx.Request | None = None) -> httpx.HTTPError:
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


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """What the reader had received but not handed over when its connection broke (aiohttp
    raises the error before it would)."""
    buffered = getattr(content, "_buffer", None)
    if not buffered:
        return b""
    rest = b"".join(buffered)
    buffered.clear()
    return rest


class _Reply:
    """An aiohttp response as the upstream client reads it (`transports.Reply`)."""

    __slots__ = ("_response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from exc

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything buffered at each read, in one piece."""
        content = self._response.content
        while True:
            try:
                piece = await content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                rest = _salvage(content)
                if rest:
                    yield rest
                raise _translate(exc) from exc
            if not piece:
                return
            yield piece

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
        # Parsed once: the few URLs and timeout pairs that deployments use.
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

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

    async def _request(
        self,
        method: str,
        url: str | URL,
        body: bytes,
        headers: Mapping[str, str] | httpx.Headers,
        timeout: aiohttp.ClientTimeout,
        *,
        decompress: bool,
        request: httpx.Request | None = None,
    ) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            try:
                return await self._client().request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    auto_decompress=decompress,
                )
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled connection the server had closed while it was idle (before any
                # answer): once on a fresh connection, so a healthy upstream's keep-alive
                # policy never shows as its failure.
                if attempt == 2:
                    raise _translate(exc, request) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _translate(exc, request) from exc
        raise AssertionError("unreachable")

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> Reply:
        """POST to an upstream (`transports.DirectTransport`)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            if len(self._timeouts) > 1024:
                self._timeouts.clear()
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts[0], sock_read=timeouts[1]
            )
        response = await self._request("POST", parsed, body, headers, timeout, decompress=True)
        return _Reply(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        response = await self._request(
            request.method,
            str(request.url),
            request.content,
            request.headers,
            timeout,
            decompress=False,
            request=request,
        )
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
