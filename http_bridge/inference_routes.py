"""The inference endpoints — OpenAI's chat completions, completions, embeddings and Responses,
Anthropic's Messages — and model listing: each one gRPC call on the core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from http_bridge import anthropic
from http_bridge.bodies import BodyTooLarge, json_object, json_response, read_limited, too_large
from http_bridge.calls import call_core, failed_response
from http_bridge.core_client import CoreStubs, key_metadata, new_request_id, stubs, with_resends
from http_bridge.disconnects import ClientGone
from http_bridge.errors import OpenAIError, from_grpc
from http_bridge.headers import rate_limit_headers
from kyma.contract.v1.constants import MetadataKey
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

# The POST endpoints `serve` answers, by path: the lean path's routing table.
INFERENCE_ROUTES: dict[str, _Route] = {
    "/v1/chat/completions": _CHAT,
    "/v1/completions": _COMPLETIONS,
    "/v1/embeddings": _EMBEDDINGS,
    "/v1/responses": _RESPONSES,
    "/v1/messages": _MESSAGES,
    "/v1/messages/count_tokens": _COUNT_TOKENS,
}


class Head:
    """What the inference endpoints read of a request's headers, in one pass over them (names
    arrive lowercased; of a repeated header the first counts, as Starlette's `get` has it)."""

    __slots__ = ("authorization", "api_key", "content_length", "origin", "betas")

    def __init__(self, scope: Scope) -> None:
        self.authorization: str | None = None
        self.api_key: str | None = None
        self.content_length: str | None = None
        self.origin: str | None = None
        self.betas: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                if self.authorization is None:
                    self.authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                if self.api_key is None:
                    self.api_key = value.decode("latin-1")
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value.decode("latin-1")
            elif name == b"origin":
                if self.origin is None:
                    self.origin = value.decode("latin-1")
            elif name == b"anthropic-beta":
                self.betas.append(value.decode("latin-1"))


class Exchange:
    """One request on an inference endpoint at the ASGI level, answered by `serve`.

    `tail` are headers added after the response's own: the lean path (`http_bridge/app.py`)
    adds there what the framework's middleware would have (`Vary: Origin`). `started` tells
    whether the response's head has been sent (an error after it cannot become a response)."""

    __slots__ = ("scope", "receive", "send", "head", "tail", "started", "gone", "call")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        head: Head,
        tail: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.scope, self.receive, self.send, self.head, self.tail = scope, receive, send, head, tail
        self.started = False
        # Set by `_watch` when the client goes away; `call` is the core call it then cancels.
        self.gone = False
        self.call: Any = None

    async def start(self, status: int, headers: dict[str, str], content_type: bytes) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-type", content_type))
        raw.extend(self.tail)
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": raw})

    async def respond(self, response: Response) -> None:
        """A whole response: its head and body (Starlette's `Response.__call__`, plus `tail`)."""
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [*response.raw_headers, *self.tail],
            }
        )
        await self.send({"type": "http.response.body", "body": response.body})


async def _watch(exchange: Exchange) -> None:
    """Wait for the client to go away, then cancel the core call under way (the one task that
    watches a request, for as long as its core calls run)."""
    receive = exchange.receive
    while (await receive())["type"] != "http.disconnect":
        pass
    exchange.gone = True
    if exchange.call is not None:
        exchange.call.cancel()


def _begun(exchange: Exchange, call: Any) -> Any:
    """`call`, made the one the watch cancels; ClientGone if the client is already gone."""
    if exchange.gone:
        call.cancel()
        raise ClientGone
    exchange.call = call
    return call


async def serve(exchange: Exchange, route: _Route, core: CoreStubs, limit: int) -> None:
    """One request on an inference endpoint, answered on `exchange`: the body read (bounded) and
    checked to be a JSON object, one call on the core, its answer or stream sent back. A client
    that goes away cancels the call (ClientGone; ClientDisconnect while the body is read)."""
    request_id = new_request_id()
    dialect = route.dialect
    head = exchange.head
    headers = {"x-request-id": request_id}
    fields: dict[str, Any] = {}
    authorization = head.authorization
    if dialect.anthropic:
        headers["request-id"] = request_id  # where Anthropic's SDKs look for it
        authorization = anthropic.authorization(authorization, head.api_key)
        if head.betas:
            fields["anthropic_beta"] = ",".join(head.betas)
    try:
        body = await read_limited(exchange.receive, head.content_length, limit)
    except BodyTooLarge:
        return await exchange.respond(dialect.error(too_large(limit), headers))
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return await exchange.respond(dialect.error(parsed, headers))
    metadata = (
        ((MetadataKey.REQUEST_ID, request_id),)
        if authorization is None
        else key_metadata(authorization, request_id)
    )
    stub = core.inference_calls
    watch = asyncio.get_running_loop().create_task(_watch(exchange))
    try:
        if route.stream is not None and route.stream_request and parsed.get("stream") is True:
            method = getattr(stub, route.stream)
            message = route.stream_request(body=body, **fields)
            await _stream(exchange, lambda: method(message, metadata=metadata), headers, dialect)
            return
        method = getattr(stub, route.unary)
        message = route.unary_request(body=body, **fields)

        async def answer() -> Any:
            # A call the watch cancelled (the client left): ClientGone.
            try:
                return await _begun(exchange, method(message, metadata=metadata))
            except asyncio.CancelledError:
                if exchange.gone:
                    raise ClientGone from None
                raise

        try:
            # A core lost before it answered: another one is asked (see core_client's rule).
            reply = await with_resends(answer)
        except grpc.aio.AioRpcError as error:
            return await exchange.respond(dialect.error(from_grpc(error), headers))
    finally:
        watch.cancel()
    limits = getattr(reply, "rate_limit", None)  # count_tokens has none: no limit applies
    if limits is not None:
        headers.update(rate_limit_headers(limits))
    usage = getattr(reply, "usage", None)
    if usage is not None:
        # The exact charge, as in the body's usage.cost (decimal USD).
        headers["x-kyma-cost"] = usage.cost_usd
    await exchange.respond(Response(reply.body, 200, headers, media_type=_JSON))


_BODY = "http.response.body"
_EVENT_STREAM = b"text/event-stream; charset=utf-8"


async def _stream(
    exchange: Exchange, start: Callable[[], Any], headers: dict[str, str], dialect: _Dialect
) -> None:
    # Wait for the first message before answering: until then every failure (no credit, rate
    # limited, upstream down after failover) is still a proper HTTP status, and a core lost
    # before it sent anything can be replaced by another (see core_client's rule).
    async def first_message() -> tuple[Any, Any]:
        call = _begun(exchange, start())
        try:
            return call, await call.read()
        except asyncio.CancelledError:
            call.cancel()
            if exchange.gone:
                raise ClientGone from None
            raise
        except BaseException:
            call.cancel()
            raise

    try:
        call, first = await with_resends(first_message)
    except grpc.aio.AioRpcError as error:
        return await exchange.respond(dialect.error(from_grpc(error), headers))
    if first is grpc.aio.EOF:
        call.cancel()
        empty = OpenAIError(502, "The model's upstream sent an empty stream.", "api_error")
        return await exchange.respond(dialect.error(empty, headers))
    headers.update(rate_limit_headers(first.rate_limit))
    headers["cache-control"] = "no-cache"
    await exchange.start(200, headers, _EVENT_STREAM)
    # Each message of the core is one write to the socket, whatever number of chunks it
    # carries. A client gone mid-stream: the watch cancelled the call, and nothing more is sent.
    try:
        if dialect.named:
            await _named_events(exchange.send, first, call, dialect)
        else:
            await _chunks(exchange.send, first, call)
    except asyncio.CancelledError:
        if exchange.gone:
            return
        raise
    finally:
        call.cancel()


async def _chunks(send: Send, first: Any, call: Any) -> None:
    try:
        message = first
        while message is not grpc.aio.EOF:
            if chunks := message.chunks:
                body = b"data: " + b"\n\ndata: ".join(chunks) + b"\n\n"
                await send({"type": _BODY, "body": body, "more_body": True})
            message = await call.read()
        end = b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as error:
        # Headers are gone: the failure becomes an error event, as OpenAI sends one.
        end = _OPENAI.stream_error(from_grpc(error), 0)
    # The last event and the end of the response in one write.
    await send({"type": _BODY, "body": end, "more_body": False})


async def _named_events(send: Send, first: Any, call: Any, dialect: _Dialect) -> None:
    """Responses' and Messages' events as SSE. The core ends a stream the upstream broke in
    the dialect's own way (`response.failed`, Anthropic's `error`) before its status arrives;
    only a stream left without its terminal event (the core gone) gets one from the bridge."""
    last = ""
    sent = 0
    end = b""
    try:
        message = first
        while message is not grpc.aio.EOF:
            if events := message.events:
                body = b"".join(
                    [b"event: " + e.type.encode() + b"\ndata: " + e.data + b"\n\n" for e in events]
                )
                await send({"type": _BODY, "body": body, "more_body": True})
                last = events[-1].type
                sent += len(events)
            message = await call.read()
    except grpc.aio.AioRpcError as error:
        if last not in dialect.terminal:
            end = dialect.stream_error(from_grpc(error), sent)
    await send({"type": _BODY, "body": end, "more_body": False})


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


class _Served(Response):
    """What a FastAPI route returns for an inference endpoint: `serve` writes the response
    itself (the lean path in `http_bridge/app.py` calls `serve` without FastAPI; requests with
    an Origin header, for CORS, come this way)."""

    def __init__(self, request: Request, route: _Route) -> None:
        super().__init__()
        self._route = route
        self._state = request.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        exchange = Exchange(scope, receive, send, Head(scope))
        await serve(exchange, self._route, state.core, state.settings.max_body_bytes)


def _infer(request: Request, route: _Route) -> Response:
    return _Served(request, route)


router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return _infer(request, _CHAT)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return _infer(request, _COMPLETIONS)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return _infer(request, _EMBEDDINGS)


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    return _infer(request, _RESPONSES)


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
    return _infer(request, _MESSAGES)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    return _infer(request, _COUNT_TOKENS)


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
