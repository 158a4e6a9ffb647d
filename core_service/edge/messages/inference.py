"""A request's usage and cost as a protobuf message."""

from __future__ import annotations

from core_service.billing.metering import Charge
from core_service.billing.pricing import nanos_to_usd
from kyma.inference.v1 import inference_service_pb2 as pb


def usage_message(charge: Charge) -> pb.Usage:
    usage = charge.usage
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        estimated=usage.estimated,
        cost_nanos=charge.cost_nanos,
        cost_usd=nanos_to_usd(charge.cost_nanos),
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )
