"""InferenceService over gRPC: each RPC is the pipeline with protobuf on both ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc

from core_service.edge.messages.inference import usage_message
from core_service.edge.messages.limits import rate_limit_message
from core_service.edge.metadata import authorization, request_id
from core_service.inference.pipeline import InferencePipeline, StreamChunks
from core_service.values import Endpoint
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

R = TypeVar("R")


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: InferencePipeline) -> None:
        self._pipeline = pipeline

    async def _unary(
        self,
        endpoint: Endpoint,
        body: bytes,
        context: grpc.aio.ServicerContext,
        response_type: Callable[..., R],
    ) -> R:
        rid = request_id(context)
        result = await self._pipeline.complete(endpoint, body, authorization(context), rid)
        return response_type(
            body=result.body,
            usage=usage_message(result.charge),
            rate_limit=rate_limit_message(result.limits),
            request_id=rid,
        )

    async def _stream(
        self, endpoint: Endpoint, body: bytes, context: grpc.aio.ServicerContext, response_type: Any
    ) -> AsyncIterator[Any]:
        rid = request_id(context)
        first = True
        events = self._pipeline.stream(endpoint, body, authorization(context), rid)
        async with aclosing(events):
            async for event in events:
                if isinstance(event, StreamChunks):
                    message = response_type(chunks=event.data)
                else:
                    message = response_type(usage=usage_message(event.charge))
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
