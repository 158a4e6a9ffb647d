"""RoutingService over gRPC: the catalogue as the account holder sees it."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator
from core_service.catalog import CatalogHolder
from core_service.edge.messages.models import model_message
from core_service.edge.metadata import authorization
from kyma.routing.v1 import routing_service_pb2 as pb
from kyma.routing.v1 import routing_service_pb2_grpc as pb_grpc


class RoutingServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self, authenticator: Authenticator, catalog: CatalogHolder) -> None:
        self._authenticator = authenticator
        self._catalog = catalog

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        caller = await self._authenticator.authenticate(authorization(context))
        # A key limited to some models lists those.
        allowed = caller.key_limits.allowed_models
        models = [m for m in self._catalog.models() if allowed is None or m.name in allowed]
        return pb.ListModelsResponse(models=[model_message(m, caller) for m in models])

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        caller = await self._authenticator.authenticate(authorization(context))
        return pb.GetModelResponse(model=model_message(self._catalog.get(request.id), caller))
