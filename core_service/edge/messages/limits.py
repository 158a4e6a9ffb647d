"""Tiers and rate-limit states as protobuf messages."""

from __future__ import annotations

from core_service.values import Principal, RateLimitSnapshot
from kyma.ratelimit.v1 import ratelimit_pb2
from kyma.ratelimit.v1 import ratelimit_service_pb2 as pb


def tier_message(principal: Principal) -> pb.TierLimits:
    tier = principal.tier
    return pb.TierLimits(
        tier=tier.tier,
        rpm=tier.rpm,
        model_rpm=tier.model_rpm,
        tpm=tier.tpm,
        pinned=principal.pinned,
    )


def rate_limit_message(snapshot: RateLimitSnapshot) -> ratelimit_pb2.RateLimitStatus:
    return ratelimit_pb2.RateLimitStatus(
        limit_requests=snapshot.limit_requests,
        remaining_requests=snapshot.remaining_requests,
        reset_requests_ms=snapshot.reset_requests_ms,
        limit_tokens=snapshot.limit_tokens,
        remaining_tokens=snapshot.remaining_tokens,
        reset_tokens_ms=snapshot.reset_tokens_ms,
    )
