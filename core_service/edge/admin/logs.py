"""Admin RPCs of the request log: look entries up, purge what retention says is old."""

from __future__ import annotations

from datetime import UTC

import grpc

from core_service.edge.messages.accounts import timestamp
from core_service.edge.messages.money import money
from core_service.logs.entry import RequestLogEntry
from core_service.logs.query import RequestLogQuery
from core_service.logs.retention import LogRetention
from kyma.admin.v1 import admin_service_pb2 as pb


def log_message(entry: RequestLogEntry) -> pb.RequestLog:
    return pb.RequestLog(
        request_id=entry.request_id,
        created_at=timestamp(entry.created_at),
        account_id=entry.account_id or "",
        key_id=entry.key_id or "",
        endpoint=entry.endpoint,
        model=entry.model,
        deployment=entry.deployment,
        status=entry.status,
        latency_ms=entry.latency_ms,
        ttft_ms=entry.ttft_ms or 0.0,
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
        cost=money(entry.cost_nanos),
        estimated=entry.estimated,
        stream=entry.stream,
        request_body=entry.request_body,
        response_body=entry.response_body,
        cached_tokens=entry.cached_tokens,
        cache_write_tokens=entry.cache_write_tokens,
        reasoning_tokens=entry.reasoning_tokens,
    )


class LogAdmin:
    def __init__(self, log_query: RequestLogQuery, retention: LogRetention) -> None:
        self._log_query = log_query
        self._retention = retention

    async def ListRequestLogs(
        self, request: pb.ListRequestLogsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRequestLogsResponse:
        entries = await self._log_query.find(
            account_id=request.account_id or None,
            request_id=request.request_id or None,
            since=request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None,
            until=request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None,
            limit=request.limit or 100,
        )
        return pb.ListRequestLogsResponse(logs=[log_message(e) for e in entries])

    async def PurgeRequestLogs(
        self, request: pb.PurgeRequestLogsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeRequestLogsResponse:
        report = await self._retention.purge(dry_run=request.dry_run)
        return pb.PurgeRequestLogsResponse(
            rows=report.rows, partitions=report.partitions, cutoff=timestamp(report.cutoff)
        )
