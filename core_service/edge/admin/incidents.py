"""Admin RPCs of the status page's incidents (each change audited)."""

from __future__ import annotations

import grpc

from core_service.edge.admin.enforcement import audit_message
from core_service.edge.admin.paging import page_size
from core_service.edge.messages.status import INCIDENT_STATUS_NAMES, incident_message
from core_service.status.incidents import Incidents
from core_service.status.report import StatusReport
from kyma.admin.v1 import admin_service_pb2 as pb


def _actor(actor: str) -> str:
    return actor.strip() or "unknown"


class IncidentAdmin:
    def __init__(self, incidents: Incidents, report: StatusReport) -> None:
        self._incidents = incidents
        self._report = report

    async def PostIncident(
        self, request: pb.PostIncidentRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostIncidentResponse:
        incident, audit = await self._incidents.post(
            request.title,
            request.body,
            status=INCIDENT_STATUS_NAMES.get(request.status, "investigating"),
            actor=_actor(request.actor),
        )
        self._report.forget()
        return pb.PostIncidentResponse(
            incident=incident_message(incident), audit=audit_message(audit)
        )

    async def UpdateIncident(
        self, request: pb.UpdateIncidentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateIncidentResponse:
        incident, audit = await self._incidents.update(
            request.id,
            request.body,
            status=INCIDENT_STATUS_NAMES.get(request.status),
            title=request.title or None,
            actor=_actor(request.actor),
        )
        self._report.forget()
        return pb.UpdateIncidentResponse(
            incident=incident_message(incident), audit=audit_message(audit)
        )

    async def ResolveIncident(
        self, request: pb.ResolveIncidentRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveIncidentResponse:
        incident, audit = await self._incidents.resolve(
            request.id, request.body, actor=_actor(request.actor)
        )
        self._report.forget()
        return pb.ResolveIncidentResponse(
            incident=incident_message(incident), audit=audit_message(audit)
        )

    async def ListIncidents(
        self, request: pb.ListIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIncidentsResponse:
        listed = await self._incidents.listed(
            include_resolved=request.include_resolved, limit=page_size(request.page_size)
        )
        return pb.ListIncidentsResponse(incidents=[incident_message(i) for i in listed])
