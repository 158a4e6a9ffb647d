"""The audit log: who did what, when and why — admins' enforcement and incidents, and account
holders' sign-ins. An entry is written inside the transaction of the change it records, so it
exists exactly when the change does."""

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


async def audit_in(
    conn: AsyncConnection,
    now: datetime,
    *,
    actor: str,
    action: str,
    account_id: str | None,
    reason: str,
    details: str = "",
) -> AuditEntry:
    values = dict(
        actor=actor[:100],
        action=action,
        account_id=account_id,
        reason=reason[:MAX_TEXT],
        details=details[:MAX_TEXT],
        created_at=now,
    )
    entry_id = await conn.scalar(insert(AuditEntry).values(**values).returning(AuditEntry.id))
    return AuditEntry(id=entry_id, **values)
