"""The public status of the service (`/v1/status`): no authentication."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from http_bridge.bodies import json_response
from http_bridge.calls import call_core, failed_response, unix
from http_bridge.core_client import stubs
from kyma.status.v1 import status_service_pb2 as status_pb

_STATES = {
    value: name.removeprefix("MODEL_STATE_").lower() for name, value in status_pb.ModelState.items()
}
_INCIDENT_STATUSES = {
    value: name.removeprefix("INCIDENT_STATUS_").lower()
    for name, value in status_pb.IncidentStatus.items()
}

router = APIRouter()


def incident_object(incident: status_pb.Incident) -> dict[str, Any]:
    return {
        "object": "incident",
        "id": incident.id,
        "title": incident.title,
        "status": _INCIDENT_STATUSES.get(incident.status, "unknown"),
        "body": incident.body,
        "created_at": unix(incident.created_at),
        "updated_at": unix(incident.updated_at),
        "resolved_at": unix(incident.resolved_at),
    }


@router.get("/v1/status")
@failed_response
async def get_status(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).status.GetStatus, status_pb.GetStatusRequest(), session=False
    )
    models = [
        {
            "id": m.model,
            "availability_1h": m.availability_1h if m.HasField("availability_1h") else None,
            "availability_24h": m.availability_24h if m.HasField("availability_24h") else None,
            "requests_1h": m.requests_1h,
            "requests_24h": m.requests_24h,
            "state": _STATES.get(m.state, "unknown"),
        }
        for m in reply.models
    ]
    return json_response(
        {
            "object": "status",
            "generated_at": unix(reply.generated_at),
            "models": models,
            "incidents": [incident_object(i) for i in reply.incidents],
        },
        headers,
    )
