"""RateLimitService over gRPC: an account's limits and what is left of them."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator
from core_service.edge.messages.limits import rate_limit_message, tier_message
from core_service.edge.metadata import authorization
from core_service.ratelimit.limiter import AccountLimiter
from kyma.ratelimit.v1 import ratelimit_service_pb2 as pb
from kyma.ratelimit.v1 import ratelimit_service_pb2_grpc as pb_grpc


class RateLimitServicer(pb_grpc.RateLimitServiceServicer):
    def __init__(self, authenticator: Authenticator, limiter: AccountLimiter) -> None:
        self._authenticator = authenticator
        self._limiter = limiter

    async def GetRateLimitStatus(
        self, request: pb.GetRateLimitStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRateLimitStatusResponse:
        principal = await self._authenticator.authenticate(authorization(context))
        snapshot = await self._limiter.status(principal, request.model)
        return pb.GetRateLimitStatusResponse(
            limits=tier_message(principal),
            status=rate_limit_message(snapshot),
            shared=self._limiter.shared,
        )
