"""InferenceService over gRPC: each RPC is the pipeline with protobuf on both ends, the API
dialect its parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
import orjson

from core_service.accounts.auth import Authenticator
from core_service.dialects.messages.dialect import BETAS
from core_service.edge.messages.inference import usage_message
from core_service.edge.messages.limits import rate_limit_message
from core_service.edge.metadata import authorization, request_id
from core_service.errors import NotFound
from core_service.inference.pipeline import InferencePipeline, StreamEnd
from core_service.logs.responses import StoredResponses
from core_service.values import Endpoint
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

R = TypeVar("R")


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(
        self,
        pipeline: InferencePipeline,
        authenticator: Authenticator,
        stored: StoredResponses,
    ) -> None:
        self._pipeline = pipeline
        self._authenticator = authenticator
        self._stored = stored

    async def _unary(
        self,
        endpoint: Endpoint,
        body: bytes,
        context: grpc.aio.ServicerContext,
        response_type: Callable[..., R],
        options: Mapping[str, str] | None = None,
    ) -> R:
        rid = request_id(context)
        result = await self._pipeline.complete(endpoint, body, authorization(context), rid, options)
        return response_type(
            body=result.body,
            usage=usage_message(result.charge),
            rate_limit=rate_limit_message(result.limits),
            request_id=rid,
        )

    async def _stream(
        self,
        endpoint: Endpoint,
        body: bytes,
        context: grpc.aio.ServicerContext,
        response_type: Any,
        options: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Any]:
        """The pipeline's stream as messages: OpenAI chat chunks as `chunks`, the named events
        of the other dialects as `events`."""
        rid = request_id(context)
        first = True
        named = endpoint in ("responses", "messages")
        events = self._pipeline.stream(endpoint, body, authorization(context), rid, options)
        async with aclosing(events):
            async for event in events:
                data = event.data
                if not data:
                    message = response_type()
                elif named:
                    message = response_type(
                        events=[pb.ServerSentEvent(type=t, data=d) for t, d in data]
                    )
                else:
                    message = response_type(chunks=[chunk for _, chunk in data])
                if isinstance(event, StreamEnd):
                    # The last message: the stream's last events, if any, and its charge.
                    message.usage.CopyFrom(usage_message(event.charge))
                if event.limits is not None:
                    message.rate_limit.CopyFrom(rate_limit_message(event.limits))
                if first:
                    message.request_id = rid
                    first = False
                yield message

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        return await self._unary(
            "chat.completions", request.body, context, pb.CreateChatCompletionResponse
        )

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        async for message in self._stream(
            "chat.completions", request.body, context, pb.StreamChatCompletionResponse
        ):
            yield message

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        return await self._unary("completions", request.body, context, pb.CreateCompletionResponse)

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        async for message in self._stream(
            "completions", request.body, context, pb.StreamCompletionResponse
        ):
            yield message

    async def CreateEmbedding(
        self, request: pb.CreateEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateEmbeddingResponse:
        return await self._unary("embeddings", request.body, context, pb.CreateEmbeddingResponse)

    async def CreateResponse(
        self, request: pb.CreateResponseRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateResponseResponse:
        return await self._unary("responses", request.body, context, pb.CreateResponseResponse)

    async def StreamResponse(
        self, request: pb.StreamResponseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponseResponse]:
        async for message in self._stream(
            "responses", request.body, context, pb.StreamResponseResponse
        ):
            yield message

    async def GetResponse(
        self, request: pb.GetResponseRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResponseResponse:
        principal = await self._authenticator.authenticate(authorization(context))
        body = await self._stored.get(principal.account_id, request.id)
        if body is None:
            raise response_not_found(request.id)
        return pb.GetResponseResponse(body=body.encode())

    async def DeleteResponse(
        self, request: pb.DeleteResponseRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponseResponse:
        principal = await self._authenticator.authenticate(authorization(context))
        if not await self._stored.delete(principal.account_id, request.id):
            raise response_not_found(request.id)
        deleted = {"id": request.id, "object": "response", "deleted": True}
        return pb.DeleteResponseResponse(body=orjson.dumps(deleted))

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        return await self._unary(
            "messages", request.body, context, pb.CreateMessageResponse, _betas(request)
        )

    async def StreamMessage(
        self, request: pb.StreamMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMessageResponse]:
        async for message in self._stream(
            "messages", request.body, context, pb.StreamMessageResponse, _betas(request)
        ):
            yield message

    async def CountMessageTokens(
        self, request: pb.CountMessageTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountMessageTokensResponse:
        rid = request_id(context)
        body = await self._pipeline.count_tokens(
            request.body, authorization(context), rid, _betas(request)
        )
        return pb.CountMessageTokensResponse(body=body, request_id=rid)


def _betas(
    request: pb.CreateMessageRequest | pb.StreamMessageRequest | pb.CountMessageTokensRequest,
) -> dict[str, str]:
    return {BETAS: request.anthropic_beta} if request.anthropic_beta else {}


def response_not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")
