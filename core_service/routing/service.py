"""RoutingService over gRPC: the catalogue as the account holder sees it."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator
from core_service.catalog import CatalogHolder, Model
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value
from kyma.routing.v1 import routing_service_pb2 as pb
from kyma.routing.v1 import routing_service_pb2_grpc as pb_grpc


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


class RoutingServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self, authenticator: Authenticator, catalog: CatalogHolder) -> None:
        self._authenticator = authenticator
        self._catalog = catalog

    @translated
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        await self._authenticator.authenticate(metadata_value(context, "authorization"))
        return pb.ListModelsResponse(models=[model_message(m) for m in self._catalog.models()])

    @translated
    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        await self._authenticator.authenticate(metadata_value(context, "authorization"))
        return pb.GetModelResponse(model=model_message(self._catalog.get(request.id)))
