"""The catalogue and routing RPCs of AdminService (mixed into AdminServicer)."""

from __future__ import annotations

import logging
import os

import grpc

from core_service.catalog import CatalogError, CatalogHolder
from core_service.errors import InvalidRequest
from core_service.grpc_errors import translated
from core_service.routing.health import BreakerState
from core_service.routing.router import Router
from kyma.admin.v1 import admin_service_pb2 as pb

log = logging.getLogger(__name__)

_STATES = {
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}


def reload_catalog(catalogue: CatalogHolder) -> list[str]:
    """Reload from the file (SIGHUP and the admin RPC both come here); the names now served.

    The upstream keys the file names are read from the environment again here, on purpose: a
    reload is how rotated upstream keys are taken up without a restart."""
    try:
        catalog = catalogue.reload(os.environ)
    except CatalogError as exc:
        log.error("catalogue not reloaded, the running one stays: %s", exc)
        raise InvalidRequest(f"The catalogue was not reloaded: {exc}") from None
    names = [model.name for model in catalog.models()]
    log.info("catalogue reloaded: %d models", len(names))
    return names


class RoutingRpcs:
    """Needs `_check`, `_router` and `_catalogue` from the servicer it is mixed into."""

    _router: Router
    _catalogue: CatalogHolder

    @translated
    async def ListDeploymentStatus(
        self, request: pb.ListDeploymentStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeploymentStatusResponse:
        self._check(context)  # type: ignore[attr-defined]
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

    @translated
    async def ReloadCatalog(
        self, request: pb.ReloadCatalogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadCatalogResponse:
        self._check(context)  # type: ignore[attr-defined]
        return pb.ReloadCatalogResponse(models=reload_catalog(self._catalogue))
