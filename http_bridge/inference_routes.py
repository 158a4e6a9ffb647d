"""The inference endpoints — OpenAI's chat completions, completions, embeddings and Responses,
Anthropic's Messages — and model listing: each one gRPC call on the core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from http_bridge import anthropic
from http_bridge.bodies import (
    BodyTooLarge,
    json_object,
    json_response,
    read_body,
    too_large,
)
from http_bridge.calls import call_core, failed_response
from http_bridge.core_client import call_metadata, new_request_id, stubs, with_resends
from http_bridge.disconnects import ClientGone
from http_bridge.errors import OpenAIError, from_grpc
from http_bridge.headers import rate_limit_headers
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.routing.v1 import routing_service_pb2 as routing_pb

_JSON = "application/json"


@dataclass(frozen=True)
class _Dialect:
    """How an API dialect looks on the wire: its errors, and its streams' events."""

    # Anthropic's error shape instead of OpenAI's.
    anthropic: bool = False
    # Streams of named events (`event: …`) with no `[DONE]`, instead of OpenAI chat chunks.
    named: bool = False
    # The events that end a named stream; a stream broken before one gets an error event.
    terminal: frozenset[str] = frozenset()

    def error(self, error: OpenAIError, headers: dict[str, str]) -> Response:
        if self.anthropic:
            return anthropic.error_response(error, headers)
        return error.response(headers)

    def stream_error(self, error: OpenAIError, sent: int) -> bytes:
        """The event that ends a stream the core could not end itself (it went away)."""
        if self.anthropic:
            return b"event: error\ndata: " + anthropic.error_body(error) + b"\n\n"
        if self.named:
            body = {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "sequence_number": sent,
            }
            return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
        return b"data: " + error.body() + b"\n\n"


_OPENAI = _Dialect()
_RESPONSES_API = _Dialect(
    named=True,
    terminal=frozenset({"response.completed", "response.incomplete", "response.failed", "error"}),
)
_MESSAGES_API = _Dialect(anthropic=True, named=True, terminal=frozenset({"message_stop", "error"}))


@dataclass(frozen=True)
class _Route:
    """The core RPCs behind one endpoint."""

    unary: str
    unary_request: type[Any]
    stream: str | None = None
    stream_request: type[Any] | None = None
    dialect: _Dialect = _OPENAI


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
_RESPONSES = _Route(
    "CreateResponse",
    inference_pb.CreateResponseRequest,
    "StreamResponse",
    inference_pb.StreamResponseRequest,
    _RESPONSES_API,
)
_MESSAGES = _Route(
    "CreateMessage",
    inference_pb.CreateMessageRequest,
    "StreamMessage",
    inference_pb.StreamMessageRequest,
    _MESSAGES_API,
)
_COUNT_TOKENS = _Route(
    "CountMessageTokens", inference_pb.CountMessageTokensRequest, dialect=_MESSAGES_API
)


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, call: Awaitable[Any]) -> Any:
    """Await the core's answer, cancelling the call if the client goes away first (ClientGone)."""
    work = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ClientGone
    return work.result()


async def _infer(request: Request, route: _Route) -> Response:
    request_id = new_request_id()
    dialect = route.dialect
    headers = {"x-request-id": request_id}
    fields: dict[str, Any] = {}
    authorization = None
    if dialect.anthropic:
        headers["request-id"] = request_id  # where Anthropic's SDKs look for it
        authorization = anthropic.authorization(request)
        if betas := anthropic.betas(request):
            fields["anthropic_beta"] = betas
    limit = request.app.state.settings.max_body_bytes
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return dialect.error(too_large(limit), headers)
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return dialect.error(parsed, headers)
    metadata = call_metadata(request, request_id, authorization=authorization)
    stub = stubs(request).inference
    if route.stream is not None and route.stream_request and parsed.get("stream") is True:
        method, message = getattr(stub, route.stream), route.stream_request(body=body, **fields)
        return await _stream(request, lambda: method(message, metadata=metadata), headers, dialect)
    method, message = getattr(stub, route.unary), route.unary_request(body=body, **fields)
    try:
        # A core lost before it answered: another one is asked (see core_client's rule).
        reply = await with_resends(
            lambda: _unless_disconnected(request, method(message, metadata=metadata))
        )
    except grpc.aio.AioRpcError as error:
        return dialect.error(from_grpc(error), headers)
    limits = getattr(reply, "rate_limit", None)  # count_tokens has none: no limit applies
    if limits is not None:
        headers.update(rate_limit_headers(limits))
    usage = getattr(reply, "usage", None)
    if usage is not None:
        # The exact charge, as in the body's usage.cost (decimal USD).
        headers["x-kyma-cost"] = usage.cost_usd
    return Response(reply.body, 200, headers, media_type=_JSON)


async def _stream(
    request: Request, start: Callable[[], Any], headers: dict[str, str], dialect: _Dialect
) -> Response:
    # Wait for the first message before answering: until then every failure (no credit, rate
    # limited, upstream down after failover) is still a proper HTTP status, and a core lost
    # before it sent anything can be replaced by another (see core_client's rule).
    async def first_message() -> tuple[Any, Any]:
        call = start()
        try:
            return call, await _unless_disconnected(request, call.read())
        except BaseException:
            call.cancel()
            raise

    try:
        call, first = await with_resends(first_message)
    except grpc.aio.AioRpcError as error:
        return dialect.error(from_grpc(error), headers)
    if first is grpc.aio.EOF:
        empty = OpenAIError(502, "The model's upstream sent an empty stream.", "api_error")
        return dialect.error(empty, headers)
    headers.update(rate_limit_headers(first.rate_limit))
    headers["cache-control"] = "no-cache"
    events = _named_events(first, call, dialect) if dialect.named else _chunks(first, call)
    return StreamingResponse(events, 200, headers, media_type="text/event-stream")


async def _chunks(first: Any, call: Any) -> AsyncIterator[bytes]:
    try:
        message = first
        while message is not grpc.aio.EOF:
            if message.chunks:
                yield b"".join(b"data: " + chunk + b"\n\n" for chunk in message.chunks)
            message = await call.read()
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as error:
        # Headers are gone: the failure becomes an error event, as OpenAI sends one.
        yield _OPENAI.stream_error(from_grpc(error), 0)
    finally:
        call.cancel()


async def _named_events(first: Any, call: Any, dialect: _Dialect) -> AsyncIterator[bytes]:
    """Responses' and Messages' events as SSE. The core ends a stream the upstream broke in
    the dialect's own way (`response.failed`, Anthropic's `error`) before its status arrives;
    only a stream left without its terminal event (the core gone) gets one from the bridge."""
    last = ""
    sent = 0
    try:
        message = first
        while message is not grpc.aio.EOF:
            if message.events:
                yield b"".join(
                    b"event: " + e.type.encode() + b"\ndata: " + e.data + b"\n\n"
                    for e in message.events
                )
                last = message.events[-1].type
                sent += len(message.events)
            message = await call.read()
    except grpc.aio.AioRpcError as error:
        if last not in dialect.terminal:
            yield dialect.stream_error(from_grpc(error), sent)
    finally:
        call.cancel()


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


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    return await _infer(request, _RESPONSES)


@router.get("/v1/responses/{response_id}")
@failed_response
async def get_response(response_id: str, request: Request) -> Response:
    reply, headers = await call_core(
        request,
        stubs(request).inference.GetResponse,
        inference_pb.GetResponseRequest(id=response_id),
    )
    return Response(reply.body, 200, headers, media_type=_JSON)


@router.delete("/v1/responses/{response_id}")
@failed_response
async def delete_response(response_id: str, request: Request) -> Response:
    reply, headers = await call_core(
        request,
        stubs(request).inference.DeleteResponse,
        inference_pb.DeleteResponseRequest(id=response_id),
    )
    return Response(reply.body, 200, headers, media_type=_JSON)


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    return await _infer(request, _MESSAGES)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    return await _infer(request, _COUNT_TOKENS)


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
