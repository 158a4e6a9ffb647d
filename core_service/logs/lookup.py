"""One past request as its account holder sees it: what the request log says of it (model,
deployment, status, tokens by kind, cost) and the ledger entries that charged it.

Two indexed reads: the log row by request id (the account's own only; never content), then its
usage entries by their idempotency keys, which the hold id names (`usage:<hold id>`, and
`usage:<hold id>:late` for a settlement that came after its hold expired). A request whose log
row is past retention is not found, even before the hourly purge removes it: what the log no
longer promises to keep is not shown.

The log is written off the request path, in batches (`logs/writer.py`), so a request is found
a moment (at most the writer's flush interval) after it ended; its settlement is written by
the hold writer, so a found request may briefly show no ledger entry yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.db.models import LedgerEntry
from core_service.errors import InvalidRequest, NotFound
from core_service.logs.query import REQUEST_LOGS
from core_service.logs.retention import LogRetention

# Request ids are Kyma's (`req_…`) or a gRPC caller's own; longer ones were never logged whole.
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    created_at: datetime
    endpoint: str
    model: str
    deployment: str
    status: str
    stream: bool
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    estimated: bool
    cost_nanos: int
    hold_id: str | None
    ledger_entries: tuple[LedgerEntry, ...]


_COLUMNS = [
    REQUEST_LOGS.c[name]
    for name in (
        "request_id",
        "created_at",
        "endpoint",
        "model",
        "deployment",
        "status",
        "stream",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "estimated",
        "cost_nanos",
        "hold_id",
    )
]


def usage_entry_keys(hold_id: str) -> tuple[str, str]:
    """The idempotency keys of a hold's usage entries (see billing/hold_store.py)."""
    return f"usage:{hold_id}", f"usage:{hold_id}:late"


class RequestRecords:
    def __init__(self, engine: AsyncEngine, retention: LogRetention) -> None:
        self._engine = engine
        self._retention = retention

    async def get(self, account_id: str, request_id: str) -> RequestRecord:
        """The account's request with this id (the latest, if a gRPC caller reused the id);
        NotFound when there is none within retention — another account's request included."""
        if not request_id:
            raise InvalidRequest("A request id is required.", param="request_id")
        if len(request_id) > MAX_REQUEST_ID:
            raise NotFound("No request with that id.", param="request_id")
        logs = REQUEST_LOGS
        statement = (
            sa.select(*_COLUMNS)
            .where(
                logs.c.request_id == request_id,
                logs.c.account_id == account_id,
                logs.c.created_at >= self._retention.cutoff(),
            )
            .order_by(logs.c.created_at.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).mappings().one_or_none()
            if row is None:
                raise NotFound("No request with that id.", param="request_id")
            entries: tuple[LedgerEntry, ...] = ()
            if row["hold_id"]:
                found = await conn.execute(
                    sa.select(LedgerEntry)
                    .where(
                        LedgerEntry.idempotency_key.in_(usage_entry_keys(row["hold_id"])),
                        LedgerEntry.debit_account == account_id,
                    )
                    .order_by(LedgerEntry.id)
                )
                entries = tuple(LedgerEntry(**entry._mapping) for entry in found)
        return RequestRecord(**row, ledger_entries=entries)
