"""The path of one inference request through the core: authenticate, read the request, hold its
worst-case cost, pick deployments, forward with failover before the first byte, relay, and
settle the hold at what was used.

Both the unary and the streaming path live here so the HTTP bridge and direct gRPC callers get
exactly the same policy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from core_service import tokens
from core_service.accounts.auth import Authenticator, Principal
from core_service.billing.metering import Charge, Metering, Reservation, charge_for
from core_service.catalog import Catalog, Deployment, Endpoint, Model
from core_service.errors import InvalidRequest, UpstreamError
from core_service.inference.requests import UPSTREAM_PATHS, InferenceRequest, parse_request
from core_service.inference.streams import StreamRelay
from core_service.inference.usage import TokenUsage, usage_from_upstream
from core_service.routing.router import Router
from core_service.upstream.client import UpstreamClient, UpstreamFailure, UpstreamStream


@dataclass(frozen=True)
class UnaryResult:
    body: bytes
    charge: Charge


@dataclass(frozen=True)
class StreamChunks:
    """Chunks for the client, in order (those that arrived from the upstream together)."""

    data: list[bytes]


@dataclass(frozen=True)
class StreamEnd:
    charge: Charge


@dataclass(frozen=True)
class _Admitted:
    principal: Principal
    request: InferenceRequest
    model: Model
    reservation: Reservation


class InferencePipeline:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        catalog: Catalog,
        router: Router,
        upstream: UpstreamClient,
        metering: Metering,
    ) -> None:
        self._authenticator = authenticator
        self._catalog = catalog
        self._router = router
        self._upstream = upstream
        self._metering = metering

    async def _admit(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str, *, stream: bool
    ) -> _Admitted:
        principal = await self._authenticator.authenticate(authorization)
        request = parse_request(endpoint, raw, stream=stream)
        model = self._catalog.get(request.model)
        if endpoint not in model.endpoints:
            raise InvalidRequest(
                f"The model '{model.name}' does not support the {endpoint} endpoint.",
                param="model",
            )
        reservation = await self._metering.reserve(principal, request, model, request_id)
        return _Admitted(principal, request, model, reservation)

    @staticmethod
    def _upstream_body(request: InferenceRequest, deployment: Deployment) -> bytes:
        body: dict[str, Any] = dict(request.body)
        body["model"] = deployment.model
        if request.stream:
            body["stream"] = True
            # Usage is what the request is billed by: ask for it whatever the client asked.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def complete(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str
    ) -> UnaryResult:
        admitted = await self._admit(endpoint, raw, authorization, request_id, stream=False)
        request, model = admitted.request, admitted.model
        try:
            reply = await self._forward(request, model)
            parsed = _json_object(reply)
        except BaseException:
            admitted.reservation.release()
            raise
        parsed["model"] = model.name
        usage = usage_from_upstream(parsed.get("usage")) or _estimate(request, parsed)
        charge = charge_for(model, usage)
        admitted.reservation.settle(charge)
        return UnaryResult(body=orjson.dumps(parsed), charge=charge)

    async def _forward(self, request: InferenceRequest, model: Model) -> bytes:
        path = UPSTREAM_PATHS[request.endpoint]
        failure: UpstreamFailure | None = None
        for deployment in self._router.candidates(model):
            try:
                return await self._upstream.post(
                    deployment, path, self._upstream_body(request, deployment)
                )
            except UpstreamFailure as exc:
                if not exc.retryable:
                    raise exc.error from None
                failure = exc
        assert failure is not None
        raise failure.error

    async def stream(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str
    ) -> AsyncIterator[StreamChunks | StreamEnd]:
        """Chunks as the client should get them, then one StreamEnd. Failover happens until the
        first chunk exists; after that an upstream failure is raised as a KymaError. However the
        stream ends (completed, broken, or the client gone), the hold is settled for what was
        relayed."""
        admitted = await self._admit(endpoint, raw, authorization, request_id, stream=True)
        model = admitted.model
        relay = StreamRelay(
            public_model=model.name,
            include_usage=admitted.request.include_usage,
            prompt_estimate=admitted.request.prompt_tokens_estimate,
        )
        try:
            stream, events, first = await self._open_with_failover(admitted.request, model, relay)
        except BaseException:
            admitted.reservation.release()
            raise
        complete = False
        try:
            if first:
                yield StreamChunks(first)
            async for batch in events:
                chunks = relay.rewrite_all(batch)
                if chunks:
                    yield StreamChunks(chunks)
            complete = True
        except UpstreamFailure as exc:
            raise exc.error from None
        finally:
            await stream.aclose()
            charge = charge_for(model, relay.usage(complete=complete))
            admitted.reservation.settle(charge)
        yield StreamEnd(charge)

    async def _open_with_failover(
        self, request: InferenceRequest, model: Model, relay: StreamRelay
    ) -> tuple[UpstreamStream, AsyncIterator[list[bytes]], list[bytes]]:
        path = UPSTREAM_PATHS[request.endpoint]
        failure: UpstreamFailure | None = None
        for deployment in self._router.candidates(model):
            stream: UpstreamStream | None = None
            try:
                stream = await self._upstream.open_stream(
                    deployment, path, self._upstream_body(request, deployment)
                )
                events = stream.events().__aiter__()
                # Nothing has reached the client until the first chunk: until then, fail over.
                while True:
                    try:
                        batch = await anext(events)
                    except StopAsyncIteration:
                        return stream, events, []
                    chunks = relay.rewrite_all(batch)
                    if chunks:
                        return stream, events, chunks
            except UpstreamFailure as exc:
                failure = exc
            except UpstreamError as exc:  # an error event or garbage before the first chunk
                failure = UpstreamFailure(exc, retryable=True)
            if stream is not None:
                await stream.aclose()
        assert failure is not None
        raise failure.error


def _json_object(reply: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        # Some servers write NaN or Infinity (not JSON, but the stdlib reads them); the answer
        # is still worth relaying, and usage that is not a whole number is estimated anyway.
        try:
            parsed = json.loads(reply)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError("The model's upstream sent a malformed response.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError("The model's upstream sent a malformed response.")
    return parsed


def _estimate(request: InferenceRequest, response: dict[str, Any]) -> TokenUsage:
    text: list[str] = []
    for choice in response.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(content, str):
                text.append(content)
    return TokenUsage(
        request.prompt_tokens_estimate, tokens.count_tokens("".join(text)), estimated=True
    )
