"""The admin audit log: who did what to which account, when and why. Every admin action writes
its entry in the same transaction as the change it makes, so neither exists without the other."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core_service.db.models import AuditEntry
from core_service.errors import InvalidRequest

MAX_TEXT = 2000


def required_text(value: str, what: str, param: str) -> str:
    """A reason or message an admin must give: stripped, non-empty, printable, bounded."""
    text = value.strip()
    if not text:
        raise InvalidRequest(f"A {what} is required.", param=param)
    if len(text) > MAX_TEXT or not text.isprintable():
        raise InvalidRequest(f"The {what} is up to {MAX_TEXT} printable characters.", param=param)
    return text


async def record_in(
    conn: AsyncConnection,
    now: datetime,
    *,
    actor: str,
    action: str,
    account_id: str,
    reason: str,
    details: str = "",
) -> AuditEntry:
    entry = AuditEntry(
        actor=actor[:100],
        action=action,
        account_id=account_id,
        reason=reason,
        details=details[:MAX_TEXT],
        created_at=now,
    )
    entry_id = await conn.scalar(
        insert(AuditEntry)
        .values(
            actor=entry.actor,
            action=entry.action,
            account_id=entry.account_id,
            reason=entry.reason,
            details=entry.details,
            created_at=entry.created_at,
        )
        .returning(AuditEntry.id)
    )
    assert entry_id is not None  # RETURNING of an insert
    entry.id = int(entry_id)
    return entry
