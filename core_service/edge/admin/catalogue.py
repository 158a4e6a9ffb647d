"""Admin RPCs of the catalogue and routing: each deployment's health, and reloading the file."""

from __future__ import annotations

import grpc

from core_service.catalog import CatalogError, CatalogHolder
from core_service.errors import InvalidRequest
from core_service.routing.health import BreakerState
from core_service.routing.router import Router
from kyma.admin.v1 import admin_service_pb2 as pb

_STATES = {
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}


class CatalogueAdmin:
    def __init__(self, router: Router, catalogue: CatalogHolder) -> None:
        self._router = router
        self._catalogue = catalogue

    async def ListDeploymentStatus(
        self, request: pb.ListDeploymentStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeploymentStatusResponse:
        return pb.ListDeploymentStatusResponse(
            deployments=[
                pb.DeploymentStatus(
                    model=s.model,
                    deployment=s.deployment,
                    state=_STATES[s.state],
                    retry_in_seconds=s.retry_in,
                    in_flight=s.in_flight,
                    latency_ms=(s.latency_ewma or 0.0) * 1000,
                    requests=s.requests,
                    failures=s.failures,
                    last_error=s.last_error,
                )
                for s in self._router.status(self._catalogue.models())
            ]
        )

    async def ReloadCatalog(
        self, request: pb.ReloadCatalogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadCatalogResponse:
        try:
            catalog = self._catalogue.reload()
        except CatalogError as exc:
            raise InvalidRequest(f"The catalogue was not reloaded: {exc}") from None
        return pb.ReloadCatalogResponse(models=[model.name for model in catalog.models()])
