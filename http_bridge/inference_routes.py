"""The OpenAI inference endpoints and model listing: each one gRPC call on the core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from http_bridge.bodies import (
    BodyTooLarge,
    json_object,
    json_response,
    read_body,
    too_large,
)
from http_bridge.calls import call_core, failed_response
from http_bridge.core_client import call_metadata, new_request_id, stubs
from http_bridge.errors import OpenAIError, from_grpc
from http_bridge.headers import rate_limit_headers
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.routing.v1 import routing_service_pb2 as routing_pb

_JSON = "application/json"


@dataclass(frozen=True)
class _Route:
    """The core RPCs behind one OpenAI endpoint."""

    unary: str
    unary_request: type[Any]
    stream: str | None = None
    stream_request: type[Any] | None = None


_CHAT = _Route(
    "CreateChatCompletion",
    inference_pb.CreateChatCompletionRequest,
    "StreamChatCompletion",
    inference_pb.StreamChatCompletionRequest,
)
_COMPLETIONS = _Route(
    "CreateCompletion",
    inference_pb.CreateCompletionRequest,
    "StreamCompletion",
    inference_pb.StreamCompletionRequest,
)
_EMBEDDINGS = _Route("CreateEmbedding", inference_pb.CreateEmbeddingRequest)


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, call: Awaitable[Any]) -> Any:
    """Await the core's answer, cancelling the call if the client goes away first."""
    work = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise asyncio.CancelledError
    return work.result()


async def _infer(request: Request, route: _Route) -> Response:
    request_id = new_request_id()
    headers = {"x-request-id": request_id}
    limit = request.app.state.settings.max_body_bytes
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return too_large(limit).response(headers)
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return parsed.response(headers)
    metadata = call_metadata(request, request_id)
    stub = stubs(request).inference
    if route.stream is not None and route.stream_request and parsed.get("stream") is True:
        call = getattr(stub, route.stream)(route.stream_request(body=body), metadata=metadata)
        return await _stream(request, call, headers)
    method = getattr(stub, route.unary)
    try:
        reply = await _unless_disconnected(
            request, method(route.unary_request(body=body), metadata=metadata)
        )
    except grpc.aio.AioRpcError as error:
        return from_grpc(error).response(headers)
    headers.update(rate_limit_headers(reply.rate_limit))
    # The exact charge, as in the body's usage.cost (decimal USD).
    headers["x-kyma-cost"] = reply.usage.cost_usd
    return Response(reply.body, 200, headers, media_type=_JSON)


async def _stream(request: Request, call: Any, headers: dict[str, str]) -> Response:
    # Wait for the first message before answering: until then every failure (no credit, rate
    # limited, upstream down after failover) is still a proper HTTP status.
    try:
        first = await _unless_disconnected(request, call.read())
    except grpc.aio.AioRpcError as error:
        return from_grpc(error).response(headers)
    except asyncio.CancelledError:
        call.cancel()
        raise
    if first is grpc.aio.EOF:
        return OpenAIError(502, "The model's upstream sent an empty stream.", "api_error").response(
            headers
        )
    headers.update(rate_limit_headers(first.rate_limit))
    headers["cache-control"] = "no-cache"

    async def events() -> AsyncIterator[bytes]:
        try:
            message = first
            while message is not grpc.aio.EOF:
                if message.chunks:
                    yield b"".join(b"data: " + chunk + b"\n\n" for chunk in message.chunks)
                message = await call.read()
            yield b"data: [DONE]\n\n"
        except grpc.aio.AioRpcError as error:
            # Headers are gone: the failure becomes an error event, as OpenAI sends one.
            yield b"data: " + from_grpc(error).body() + b"\n\n"
        finally:
            call.cancel()

    return StreamingResponse(events(), 200, headers, media_type="text/event-stream")


def _model_object(model: routing_pb.Model) -> dict[str, Any]:
    """OpenAI's four fields as OpenAI has them (the SDK parses them), Kyma's beside them: what
    the catalogue does not declare is absent."""
    found: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }
    if model.HasField("context_window"):
        found["context_length"] = model.context_window
    if model.HasField("max_output_tokens"):
        found["max_output_tokens"] = model.max_output_tokens
    price = model.price
    found["pricing"] = {
        "currency": "USD",
        "input_per_million": price.input_usd_per_million,
        "cached_input_per_million": price.cached_input_usd_per_million,
        "cache_write_per_million": price.cache_write_usd_per_million,
        "output_per_million": price.output_usd_per_million,
    }
    found["endpoints"] = [endpoint.path for endpoint in model.endpoint_details]
    found["dialects"] = [endpoint.dialect for endpoint in model.endpoint_details]
    capabilities = {
        name: getattr(model.capabilities, name)
        for name in ("tools", "structured_outputs", "vision", "reasoning")
        if model.capabilities.HasField(name)
    }
    if capabilities:
        found["capabilities"] = capabilities
    if model.HasField("caller_limits"):
        limits = model.caller_limits
        found["limits"] = {
            "tier": limits.tier,
            "requests_per_minute": limits.rpm,
            "requests_per_minute_per_model": limits.model_rpm,
            "tokens_per_minute": limits.tpm,
        }
    return found


router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _infer(request, _CHAT)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _infer(request, _COMPLETIONS)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await _infer(request, _EMBEDDINGS)


@router.get("/v1/models")
@failed_response
async def list_models(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).routing.ListModels, routing_pb.ListModelsRequest(), session=False
    )
    return json_response(
        {"object": "list", "data": [_model_object(m) for m in reply.models]}, headers
    )


@router.get("/v1/models/{model:path}")
@failed_response
async def get_model(model: str, request: Request) -> Response:
    reply, headers = await call_core(
        request,
        stubs(request).routing.GetModel,
        routing_pb.GetModelRequest(id=model),
        session=False,
    )
    return json_response(_model_object(reply.model), headers)
