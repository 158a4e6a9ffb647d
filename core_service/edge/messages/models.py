"""Catalogue models as protobuf messages."""

from __future__ import annotations

from core_service.catalog import Model
from kyma.routing.v1 import routing_service_pb2 as pb


def model_message(model: Model) -> pb.Model:
    return pb.Model(
        id=model.name,
        owned_by=model.owned_by,
        created=model.created,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        price=pb.Price(
            input_usd_per_million=str(model.price.input_per_million),
            output_usd_per_million=str(model.price.output_per_million),
        ),
        endpoints=list(model.endpoints),
    )
