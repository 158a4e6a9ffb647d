"""Looking request logs up: by account, request id and time, newest first (admins), and an
account's own request history without content (its holder)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.db.types import UTCDateTime
from core_service.errors import InvalidRequest
from core_service.logs.entry import RequestLogEntry

MAX_LIMIT = 1000

# Core only (no ORM model): a read path over a table written by the log writer, which goes
# around SQLAlchemy. Mirrors migrations 0006 and 0010.
REQUEST_LOGS = sa.Table(
    "request_logs",
    sa.MetaData(),
    sa.Column("id", sa.Text()),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("request_id", sa.Text()),
    sa.Column("account_id", sa.Text()),
    sa.Column("key_id", sa.Text()),
    sa.Column("endpoint", sa.Text()),
    sa.Column("model", sa.Text()),
    sa.Column("deployment", sa.Text()),
    sa.Column("status", sa.Text()),
    sa.Column("latency_ms", sa.Float()),
    sa.Column("ttft_ms", sa.Float()),
    sa.Column("prompt_tokens", sa.BigInteger()),
    sa.Column("completion_tokens", sa.BigInteger()),
    sa.Column("cost_nanos", sa.BigInteger()),
    sa.Column("estimated", sa.Boolean()),
    sa.Column("stream", sa.Boolean()),
    sa.Column("request_body", sa.Text()),
    sa.Column("response_body", sa.Text()),
    sa.Column("cached_tokens", sa.BigInteger()),
    sa.Column("cache_write_tokens", sa.BigInteger()),
    sa.Column("reasoning_tokens", sa.BigInteger()),
    sa.Column("hold_id", sa.Text()),
)


def _aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.tzinfo is None:
        raise InvalidRequest(f"'{name}' must include a time zone.", param=name)


class RequestLogQuery:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def find(
        self,
        *,
        account_id: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[RequestLogEntry]:
        """Entries matching every filter given, newest first; `since` inclusive, `until` exclusive."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"'limit' must be between 1 and {MAX_LIMIT}.", param="limit")
        _aware("since", since)
        _aware("until", until)
        if since is not None and until is not None and since > until:
            raise InvalidRequest("'since' must not be after 'until'.", param="since")
        table = REQUEST_LOGS
        statement = (
            sa.select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        )
        if account_id is not None:
            statement = statement.where(table.c.account_id == account_id)
        if request_id is not None:
            statement = statement.where(table.c.request_id == request_id)
        if since is not None:
            statement = statement.where(table.c.created_at >= since)
        if until is not None:
            statement = statement.where(table.c.created_at < until)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [RequestLogEntry(**row) for row in rows]

    async def history(
        self, account_id: str, *, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[RequestSummary]:
        """The account's requests, newest first, without their content; `before` (created_at,
        id) continues after the last of a previous page."""
        table = REQUEST_LOGS
        statement = (
            sa.select(*(table.c[name] for name in _SUMMARY))
            .where(table.c.account_id == account_id)
            .order_by(table.c.created_at.desc(), table.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            at, entry_id = before
            statement = statement.where(
                sa.or_(
                    table.c.created_at < at,
                    sa.and_(table.c.created_at == at, table.c.id < entry_id),
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [RequestSummary(**row) for row in rows]


_SUMMARY = (
    "id",
    "created_at",
    "request_id",
    "key_id",
    "endpoint",
    "model",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "estimated",
    "stream",
)


@dataclass(frozen=True)
class RequestSummary:
    """A logged request without its content (what an account's history lists)."""

    id: str
    created_at: datetime
    request_id: str
    key_id: str | None
    endpoint: str
    model: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    estimated: bool
    stream: bool
