"""InferenceService over gRPC: each RPC is the pipeline with protobuf on both ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from core_service.billing.metering import Charge
from core_service.billing.pricing import nanos_to_usd
from core_service.catalog import Endpoint
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value, request_id
from core_service.inference.pipeline import InferencePipeline, StreamChunks
from core_service.ratelimit.snapshot import RateLimitSnapshot
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc
from kyma.ratelimit.v1 import ratelimit_pb2


def usage_message(charge: Charge) -> pb.Usage:
    usage = charge.usage
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        estimated=usage.estimated,
        cost_nanos=charge.cost_nanos,
        cost_usd=nanos_to_usd(charge.cost_nanos),
    )


def rate_limit_message(snapshot: RateLimitSnapshot) -> ratelimit_pb2.RateLimitStatus:
    return ratelimit_pb2.RateLimitStatus(**snapshot.__dict__)


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: InferencePipeline) -> None:
        self._pipeline = pipeline

    async def _unary(
        self, endpoint: Endpoint, body: bytes, context: grpc.aio.ServicerContext, response_type: Any
    ) -> Any:
        rid = request_id(context)
        result = await self._pipeline.complete(
            endpoint, body, metadata_value(context, "authorization"), rid
        )
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
        events = self._pipeline.stream(
            endpoint, body, metadata_value(context, "authorization"), rid
        )
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

    @translated
    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        return await self._unary(
            "chat.completions", request.body, context, pb.CreateChatCompletionResponse
        )

    @translated
    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        async for message in self._stream(
            "chat.completions", request.body, context, pb.StreamChatCompletionResponse
        ):
            yield message

    @translated
    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        return await self._unary("completions", request.body, context, pb.CreateCompletionResponse)

    @translated
    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        async for message in self._stream(
            "completions", request.body, context, pb.StreamCompletionResponse
        ):
            yield message

    @translated
    async def CreateEmbedding(
        self, request: pb.CreateEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateEmbeddingResponse:
        return await self._unary("embeddings", request.body, context, pb.CreateEmbeddingResponse)
