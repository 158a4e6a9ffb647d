"""A past request, as its account holder looks it up, as a protobuf message."""

from __future__ import annotations

from core_service.edge.messages.accounts import timestamp
from core_service.edge.messages.money import entry_message, money
from core_service.logs.lookup import RequestRecord
from kyma.accounting.v1 import accounting_service_pb2 as pb


def request_message(record: RequestRecord, account_id: str) -> pb.RequestRecord:
    return pb.RequestRecord(
        request_id=record.request_id,
        created_at=timestamp(record.created_at),
        endpoint=record.endpoint,
        model=record.model,
        deployment=record.deployment,
        status=record.status,
        stream=record.stream,
        tokens=pb.TokenCounts(
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            total_tokens=record.prompt_tokens + record.completion_tokens,
            cached_tokens=record.cached_tokens,
            cache_write_tokens=record.cache_write_tokens,
            reasoning_tokens=record.reasoning_tokens,
        ),
        estimated=record.estimated,
        cost=money(record.cost_nanos),
        latency_ms=record.latency_ms,
        ledger_entries=[entry_message(entry, account_id) for entry in record.ledger_entries],
    )
