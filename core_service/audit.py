"""The audit log: who did what, when and why — admins' enforcement and incidents, and account
holders' sign-ins. An entry is written inside the transaction of the change it records, so it
exists exactly when the change does."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core_service.db.models import AuditEntry

MAX_TEXT = 2000


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
