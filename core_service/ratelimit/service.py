"""RateLimitService over gRPC: an account's limits and what is left of them."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator, Principal
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value
from core_service.ratelimit.limiter import AccountLimiter
from core_service.ratelimit.snapshot import RateLimitSnapshot
from kyma.ratelimit.v1 import ratelimit_pb2
from kyma.ratelimit.v1 import ratelimit_service_pb2 as pb
from kyma.ratelimit.v1 import ratelimit_service_pb2_grpc as pb_grpc


def tier_message(principal: Principal) -> pb.TierLimits:
    tier = principal.tier
    return pb.TierLimits(
        tier=tier.tier,
        rpm=tier.rpm,
        model_rpm=tier.model_rpm,
        tpm=tier.tpm,
        pinned=principal.pinned,
    )


def status_message(snapshot: RateLimitSnapshot) -> ratelimit_pb2.RateLimitStatus:
    return ratelimit_pb2.RateLimitStatus(**snapshot.__dict__)


class RateLimitServicer(pb_grpc.RateLimitServiceServicer):
    def __init__(self, authenticator: Authenticator, limiter: AccountLimiter) -> None:
        self._authenticator = authenticator
        self._limiter = limiter

    @translated
    async def GetRateLimitStatus(
        self, request: pb.GetRateLimitStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRateLimitStatusResponse:
        principal = await self._authenticator.authenticate(metadata_value(context, "authorization"))
        snapshot = await self._limiter.status(principal, request.model)
        return pb.GetRateLimitStatusResponse(
            limits=tier_message(principal),
            status=status_message(snapshot),
            shared=self._limiter.shared,
        )
