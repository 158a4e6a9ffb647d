"""The status page's facts and incidents as protobuf messages."""

from __future__ import annotations

from core_service.db.models import Incident
from core_service.edge.messages.accounts import timestamp
from core_service.status.report import ModelReport, ModelState, StatusView
from kyma.status.v1 import status_service_pb2 as pb

_STATES = {
    ModelState.OPERATIONAL: pb.MODEL_STATE_OPERATIONAL,
    ModelState.DEGRADED: pb.MODEL_STATE_DEGRADED,
    ModelState.DOWN: pb.MODEL_STATE_DOWN,
}
INCIDENT_STATUSES = {
    "investigating": pb.INCIDENT_STATUS_INVESTIGATING,
    "identified": pb.INCIDENT_STATUS_IDENTIFIED,
    "monitoring": pb.INCIDENT_STATUS_MONITORING,
    "resolved": pb.INCIDENT_STATUS_RESOLVED,
}
INCIDENT_STATUS_NAMES = {value: name for name, value in INCIDENT_STATUSES.items()}


def incident_message(incident: Incident) -> pb.Incident:
    return pb.Incident(
        id=incident.id,
        title=incident.title,
        status=INCIDENT_STATUSES.get(incident.status, pb.INCIDENT_STATUS_UNSPECIFIED),
        body=incident.body,
        created_at=timestamp(incident.created_at),
        updated_at=timestamp(incident.updated_at),
        resolved_at=timestamp(incident.resolved_at),
    )


def _model_message(report: ModelReport) -> pb.ModelStatus:
    message = pb.ModelStatus(
        model=report.model,
        requests_1h=report.last_hour.requests,
        requests_24h=report.last_day.requests,
        state=_STATES[report.state],
    )
    if report.last_hour.share is not None:
        message.availability_1h = report.last_hour.share
    if report.last_day.share is not None:
        message.availability_24h = report.last_day.share
    return message


def status_message(view: StatusView) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        models=[_model_message(m) for m in view.models],
        incidents=[incident_message(i) for i in view.incidents],
        generated_at=timestamp(view.generated_at),
    )
