"""Talking to upstream deployments: one pooled transport for every deployment.

The transports are injected (the composition root routes `demo://` to the built-in demo model;
tests pass their own). Failures are sorted here into what failover may retry (nothing
reached the client yet and another deployment may do better) and what it must not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

from core_service.catalog import Deployment
from core_service.errors import (
    InvalidRequest,
    KymaError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from core_service.upstream.refusals import sanitized, upstream_reason
from core_service.upstream.sse import iter_sse_batches
from core_service.upstream.transports import Reply, Timeouts, UpstreamTransports


class UpstreamFailure(Exception):
    """One deployment failed one attempt. `retryable` says whether another deployment may be
    tried; `error` is what the client gets if none succeeds."""

    def __init__(self, error: KymaError, *, retryable: bool, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


_NO_HEADERS: Mapping[str, str] = {}


@dataclass
class UpstreamReply:
    status: int
    body: bytes


def _headers(deployment: Deployment, extra: Mapping[str, str]) -> dict[str, str]:
    """The upstream call's headers: the dialect's own (`extra`), and the deployment's key, as
    a bearer token and — for Anthropic's dialect, which reads it there — as `x-api-key`."""
    headers = {"content-type": "application/json", "accept": "application/json", **extra}
    if deployment.api_key is not None:
        key = deployment.api_key.get_secret_value()
        headers["authorization"] = f"Bearer {key}"
        if "anthropic-version" in extra:
            headers["x-api-key"] = key
    return headers


def _retry_after(response: Reply) -> float | None:
    value = response.header("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def failure_for_status(deployment: Deployment, response: Reply, body: bytes) -> UpstreamFailure:
    """Sort an upstream's non-2xx answer. Its own 4xx about the request goes back to the client
    as the user's error, with its reason; auth or routing trouble with our deployment is ours,
    never theirs. A 5xx may be the upstream's trouble or its way of refusing this request:
    another deployment is tried, and if none answers, the client gets the upstream's reason
    (sanitized) and is told to retry only where retrying can help (503, 502, 504)."""
    status = response.status
    raw = upstream_reason(body)
    reason = sanitized(raw, deployment) if raw else None
    if status == 429:
        return UpstreamFailure(
            UpstreamUnavailable("The model is overloaded upstream. Please retry shortly."),
            retryable=True,
            retry_after=_retry_after(response),
        )
    if status >= 500:
        transient = status in (502, 503, 504)
        said = f": {reason}" if reason else "."
        advice = " Please retry shortly." if transient else ""
        return UpstreamFailure(
            UpstreamError(f"The model's upstream failed (HTTP {status}){said}{advice}"),
            retryable=True,
        )
    if status in (400, 413, 422):
        return UpstreamFailure(
            InvalidRequest(reason or "The upstream refused the request as invalid."),
            retryable=False,
        )
    # 401/403/404 and the rest: the deployment is misconfigured; another one may work.
    return UpstreamFailure(
        UpstreamError(f"The model's upstream refused the request (HTTP {status})."),
        retryable=True,
    )


def _transport_failure(exc: Exception) -> UpstreamFailure:
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return UpstreamFailure(UpstreamTimeout("The model's upstream timed out."), retryable=True)
    return UpstreamFailure(
        UpstreamUnavailable("The model's upstream could not be reached."), retryable=True
    )


def _timeouts(deployment: Deployment) -> Timeouts:
    timeouts = deployment.timeouts
    return (timeouts.connect, max(timeouts.first_token, timeouts.idle))


class UpstreamClient:
    def __init__(self, transports: UpstreamTransports) -> None:
        self._transports = transports

    async def _send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        stream: bool,
        headers: Mapping[str, str],
    ) -> Reply:
        url = f"{deployment.base_url}/{path}"
        return await self._transports.send(
            url, body, _headers(deployment, headers), _timeouts(deployment), stream=stream
        )

    async def post(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> bytes:
        """Send one non-streaming request; the 2xx body, or UpstreamFailure."""
        try:
            async with asyncio.timeout(deployment.timeouts.total):
                response = await self._send(deployment, path, body, stream=False, headers=headers)
                try:
                    content = await response.read()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise _transport_failure(exc) from exc
        if response.status >= 300:
            raise failure_for_status(deployment, response, content)
        return content

    async def open_stream(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> UpstreamStream:
        """Send a streaming request and wait for its response headers (within the first-token
        timeout). Failures up to here may be retried elsewhere; the returned stream's may not."""
        try:
            async with asyncio.timeout(deployment.timeouts.first_token):
                response = await self._send(deployment, path, body, stream=True, headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise _transport_failure(exc) from exc
        if response.status >= 300:
            try:
                content = await response.read()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            raise failure_for_status(deployment, response, content)
        return UpstreamStream(response, deployment)


class UpstreamStream:
    """An open upstream SSE stream: its event data in order, under the idle and total timeouts."""

    def __init__(self, response: Reply, deployment: Deployment) -> None:
        self._response = response
        self._deployment = deployment

    async def events(self) -> AsyncIterator[list[bytes]]:
        """Event data in batches (the events of one network read) until `[DONE]` or the end.
        Raises UpstreamFailure (not retryable) when the stream breaks, stalls longer than the
        idle timeout or outlives the total timeout."""
        timeouts = self._deployment.timeouts
        batches = iter_sse_batches(self._response.pieces()).__aiter__()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        try:
            while True:
                wait = min(timeouts.idle, deadline - loop.time())
                try:
                    async with asyncio.timeout(max(wait, 0)):
                        batch = await anext(batches)
                except StopAsyncIteration:
                    return
                except (httpx.HTTPError, TimeoutError) as exc:
                    failure = _transport_failure(exc)
                    failure.retryable = False
                    raise failure from exc
                if b"[DONE]" in batch:
                    before = batch[: batch.index(b"[DONE]")]
                    if before:
                        yield before
                    await self._finish(batches, wait)
                    return
                yield batch
        finally:
            await self.aclose()

    @staticmethod
    async def _finish(batches: AsyncIterator[list[bytes]], wait: float) -> None:
        """Read what follows `[DONE]` (the body's last empty chunk) so the pooled connection
        can serve the next request instead of being dropped."""
        try:
            async with asyncio.timeout(min(max(wait, 0), 1.0)):
                async for _ in batches:
                    pass
        except (httpx.HTTPError, TimeoutError):
            pass

    async def aclose(self) -> None:
        await self._response.aclose()
