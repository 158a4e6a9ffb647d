"""StatusService over gRPC: the public status of the service (no authentication)."""

from __future__ import annotations

import grpc

from core_service.edge.messages.status import status_message
from core_service.status.report import StatusReport
from kyma.status.v1 import status_service_pb2 as pb
from kyma.status.v1 import status_service_pb2_grpc as pb_grpc


class StatusServicer(pb_grpc.StatusServiceServicer):
    def __init__(self, report: StatusReport) -> None:
        self._report = report

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        return status_message(await self._report.view())
