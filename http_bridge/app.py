"""The HTTP bridge: OpenAI-compatible HTTP in, one gRPC call on the core out, and back.

It holds no business logic and no database. It reads the body (bounded), checks only that it is
a JSON object and whether it asks to stream, and hands it over unchanged; everything else —
authentication, credits, limits, routing — is the core's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kyma.accounting.v1 import accounting_service_pb2_grpc
from kyma.inference.v1 import inference_service_pb2 as inference_pb
from kyma.inference.v1 import inference_service_pb2_grpc
from kyma.routing.v1 import routing_service_pb2 as routing_pb
from kyma.routing.v1 import routing_service_pb2_grpc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse

from http_bridge.errors import OpenAIError, from_grpc
from http_bridge.headers import rate_limit_headers
from http_bridge.settings import BridgeSettings

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]
_JSON = "application/json"
log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


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


class Core:
    """The bridge's gRPC stubs on one channel to the core."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        self.routing = routing_service_pb2_grpc.RoutingServiceStub(channel)
        self.accounting = accounting_service_pb2_grpc.AccountingServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def _metadata(request: Request, request_id: str) -> tuple[tuple[str, str], ...]:
    authorization = request.headers.get("authorization")
    if authorization is None:
        return (("x-request-id", request_id),)
    if not (authorization.isascii() and authorization.isprintable()):
        # gRPC metadata is printable ASCII; such a header cannot hold a key, so the core is
        # asked about a token that fails its checks, and answers as for any wrong key.
        authorization = "Bearer invalid"
    return (("authorization", authorization), ("x-request-id", request_id))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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


def _sse_error(error: OpenAIError) -> bytes:
    return b"data: " + error.body() + b"\n\n"


def create_app(settings: BridgeSettings, *, channel: grpc.aio.Channel | None = None) -> FastAPI:
    """The bridge app. Without `channel` it opens one to settings.core_target on start-up."""
    core: Core | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal core
        own = channel is None
        core = Core(channel or grpc.aio.insecure_channel(settings.core_target, options=GRPC_OPTIONS))
        try:
            yield
        finally:
            if own:
                await core.channel.close()

    app = FastAPI(
        title="Kyma", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    def the_core() -> Core:
        assert core is not None, "the bridge serves only between start-up and shutdown"
        return core

    async def infer(request: Request, route: _Route) -> Response:
        request_id = new_request_id()
        headers = {"x-request-id": request_id}
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except BodyTooLarge:
            return OpenAIError(
                413,
                f"The request body is larger than {settings.max_body_bytes} bytes.",
                code="request_too_large",
            ).response(headers)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return OpenAIError(
                400, "We could not parse the JSON body of your request. Send a valid JSON object."
            ).response(headers)
        if not isinstance(parsed, dict):
            return OpenAIError(400, "The request body must be a JSON object.").response(headers)
        metadata = _metadata(request, request_id)
        stub = the_core().inference
        if route.stream is not None and route.stream_request and parsed.get("stream") is True:
            call = getattr(stub, route.stream)(route.stream_request(body=body), metadata=metadata)
            return await stream(request, call, headers)
        method = getattr(stub, route.unary)
        try:
            reply = await _unless_disconnected(
                request, method(route.unary_request(body=body), metadata=metadata)
            )
        except grpc.aio.AioRpcError as error:
            return from_grpc(error).response(headers)
        headers.update(rate_limit_headers(reply.rate_limit))
        return Response(reply.body, 200, headers, media_type=_JSON)

    async def stream(request: Request, call: Any, headers: dict[str, str]) -> Response:
        try:
            first = await _unless_disconnected(request, call.read())
        except grpc.aio.AioRpcError as error:
            return from_grpc(error).response(headers)
        except asyncio.CancelledError:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            return OpenAIError(502, "The model's upstream sent an empty stream.", "api_error").response(headers)
        headers.update(rate_limit_headers(first.rate_limit))
        headers["cache-control"] = "no-cache"

        async def events() -> AsyncIterator[bytes]:
            try:
                message = first
                while message is not grpc.aio.EOF:
                    if message.chunk:
                        yield b"data: " + message.chunk + b"\n\n"
                    message = await call.read()
                yield b"data: [DONE]\n\n"
            except grpc.aio.AioRpcError as error:
                # Headers are gone: the failure becomes an error event, as OpenAI sends one.
                yield _sse_error(from_grpc(error))
            finally:
                call.cancel()

        return StreamingResponse(events(), 200, headers, media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await infer(request, _CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await infer(request, _COMPLETIONS)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await infer(request, _EMBEDDINGS)

    def model_object(model: routing_pb.Model) -> dict[str, Any]:
        return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        request_id = new_request_id()
        headers = {"x-request-id": request_id}
        try:
            reply = await the_core().routing.ListModels(
                routing_pb.ListModelsRequest(), metadata=_metadata(request, request_id)
            )
        except grpc.aio.AioRpcError as error:
            return from_grpc(error).response(headers)
        body = {"object": "list", "data": [model_object(m) for m in reply.models]}
        return Response(orjson.dumps(body), 200, headers, media_type=_JSON)

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> Response:
        request_id = new_request_id()
        headers = {"x-request-id": request_id}
        try:
            reply = await the_core().routing.GetModel(
                routing_pb.GetModelRequest(id=model), metadata=_metadata(request, request_id)
            )
        except grpc.aio.AioRpcError as error:
            return from_grpc(error).response(headers)
        return Response(orjson.dumps(model_object(reply.model)), 200, headers, media_type=_JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', 200, {"x-request-id": new_request_id()}, media_type=_JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            reply = await the_core().health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        body = {"status": "ready" if serving else "unavailable", "core": "serving" if serving else "unreachable"}
        return Response(
            orjson.dumps(body), 200 if serving else 503, {"x-request-id": new_request_id()},
            media_type=_JSON,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "Unknown URL. See the API reference for the paths Kyma serves.",
                   405: "Method not allowed for this URL."}.get(exc.status_code, str(exc.detail))
        return OpenAIError(exc.status_code, message).response({"x-request-id": new_request_id()})

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unexpected bridge error: %s", type(exc).__name__, exc_info=exc)
        return OpenAIError(
            500, "The Kyma bridge had an internal error. Please retry.", "api_error"
        ).response({"x-request-id": new_request_id()})

    return app
