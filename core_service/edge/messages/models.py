"""Catalogue models as protobuf messages."""

from __future__ import annotations

from core_service.catalog import Model
from core_service.edge.messages.limits import tier_message
from core_service.routing.listing import decimal_text, listing
from core_service.values import Principal
from kyma.routing.v1 import routing_service_pb2 as pb


def model_message(model: Model, caller: Principal | None = None) -> pb.Model:
    listed = listing(model)
    price = listed.price
    message = pb.Model(
        id=listed.name,
        owned_by=listed.owned_by,
        created=listed.created,
        price=pb.Price(
            input_usd_per_million=decimal_text(price.input),
            output_usd_per_million=decimal_text(price.output),
            cached_input_usd_per_million=decimal_text(price.cached_input),
            cache_write_usd_per_million=decimal_text(price.cache_write),
        ),
        endpoints=[endpoint.name for endpoint in listed.endpoints],
        endpoint_details=[
            pb.ModelEndpoint(name=e.name, path=e.path, dialect=e.dialect) for e in listed.endpoints
        ],
        capabilities=pb.Capabilities(**listed.capabilities),
    )
    if listed.context_window is not None:
        message.context_window = listed.context_window
    if listed.max_output_tokens is not None:
        message.max_output_tokens = listed.max_output_tokens
    if caller is not None:
        message.caller_limits.CopyFrom(tier_message(caller))
    return message
