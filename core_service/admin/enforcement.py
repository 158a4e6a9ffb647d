"""Enforcement: the admin actions the terms of service name — warning, credit reset, temporary
suspension, permanent ban (and lifting them), revoking referral privileges. Each one is written
to the audit log in the same transaction as the change it makes: who, when, why."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.account_events import ACCOUNT_CHANGED, AccountEvents
from core_service.audit import audit_in
from core_service.billing.ledger import SYSTEM_ADJUSTMENTS, EntryKind, Transfer, post_in
from core_service.clock import Clock
from core_service.db.models import Account, AccountNotice, AuditEntry, Balance
from core_service.errors import InvalidRequest, NotFound

MAX_TEXT = 2000


def _text(value: str, what: str, param: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidRequest(f"A {what} is required.", param=param)
    if len(text) > MAX_TEXT or not text.isprintable():
        raise InvalidRequest(f"The {what} is up to {MAX_TEXT} printable characters.", param=param)
    return text


class Enforcement:
    def __init__(
        self, engine: AsyncEngine, clock: Clock, *, events: AccountEvents | None = None
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._events = events

    async def _audit(
        self,
        conn: AsyncConnection,
        *,
        actor: str,
        action: str,
        account_id: str,
        reason: str,
        details: str = "",
    ) -> AuditEntry:
        return await audit_in(
            conn,
            self._clock.now(),
            actor=actor,
            action=action,
            account_id=account_id,
            reason=reason,
            details=details,
        )

    @staticmethod
    async def _require(conn: AsyncConnection, account_id: str) -> None:
        if await conn.scalar(select(Account.id).where(Account.id == account_id)) is None:
            raise NotFound(f"No account {account_id}.", param="account_id")

    async def warn(self, account_id: str, message: str, *, actor: str, reason: str) -> AuditEntry:
        message = _text(message, "message", "message")
        reason = _text(reason, "reason", "reason")
        async with self._engine.begin() as conn:
            await self._require(conn, account_id)
            await conn.execute(
                insert(AccountNotice).values(
                    account_id=account_id, message=message, created_at=self._clock.now()
                )
            )
            return await self._audit(
                conn,
                actor=actor,
                action="warn",
                account_id=account_id,
                reason=reason,
                details=message,
            )

    async def reset_credits(
        self, account_id: str, *, actor: str, reason: str
    ) -> tuple[int, AuditEntry]:
        """Take the available balance to zero (credit held for requests in flight settles as
        usual). Returns the amount removed."""
        reason = _text(reason, "reason", "reason")
        async with self._engine.begin() as conn:
            await self._require(conn, account_id)
            available = await conn.scalar(
                select(Balance.balance_nanos - Balance.held_nanos).where(
                    Balance.ledger_account == account_id
                )
            )
            amount = int(available or 0)
            audit = await self._audit(
                conn,
                actor=actor,
                action="reset_credits",
                account_id=account_id,
                reason=reason,
                details=f"removed {amount} nano-USD",
            )
            if amount > 0:
                await post_in(
                    conn,
                    Transfer(
                        idempotency_key=f"reset:{audit.id}",
                        kind=EntryKind.CREDIT_RESET,
                        debit_account=account_id,
                        credit_account=SYSTEM_ADJUSTMENTS,
                        amount_nanos=amount,
                        actor=f"admin:{actor}"[:100],
                        reason=f"Credit reset: {reason}"[:500],
                        reference=f"audit:{audit.id}",
                    ),
                    self._clock.now(),
                )
            return amount, audit

    async def _set_status(
        self,
        account_id: str,
        *,
        status: str,
        reason: str,
        until: datetime | None,
        actor: str,
        action: str,
    ) -> AuditEntry:
        reason = _text(reason, "reason", "reason")
        async with self._engine.begin() as conn:
            await self._require(conn, account_id)
            await conn.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(
                    status=status,
                    status_reason=None if status == "active" else reason,
                    suspended_until=until,
                )
            )
            if self._events is not None:
                # Every node refuses (or serves again) the account's keys within a poll.
                await self._events.record_in(conn, ACCOUNT_CHANGED, account_id=account_id)
            details = f"until {until.isoformat()}" if until else ""
            return await self._audit(
                conn,
                actor=actor,
                action=action,
                account_id=account_id,
                reason=reason,
                details=details,
            )

    async def suspend(
        self, account_id: str, until: datetime, *, actor: str, reason: str
    ) -> AuditEntry:
        if until <= self._clock.now():
            raise InvalidRequest("A suspension must end in the future.", param="until")
        return await self._set_status(
            account_id,
            status="suspended",
            reason=reason,
            until=until,
            actor=actor,
            action="suspend",
        )

    async def ban(self, account_id: str, *, actor: str, reason: str) -> AuditEntry:
        return await self._set_status(
            account_id, status="banned", reason=reason, until=None, actor=actor, action="ban"
        )

    async def reinstate(self, account_id: str, *, actor: str, reason: str) -> AuditEntry:
        return await self._set_status(
            account_id, status="active", reason=reason, until=None, actor=actor, action="reinstate"
        )

    async def revoke_referrals(self, account_id: str, *, actor: str, reason: str) -> AuditEntry:
        reason = _text(reason, "reason", "reason")
        async with self._engine.begin() as conn:
            await self._require(conn, account_id)
            await conn.execute(
                update(Account).where(Account.id == account_id).values(referrals_revoked=True)
            )
            return await self._audit(
                conn, actor=actor, action="revoke_referrals", account_id=account_id, reason=reason
            )

    async def audit_entries(
        self, account_id: str | None, *, limit: int, before_id: int | None
    ) -> list[AuditEntry]:
        statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if account_id:
            statement = statement.where(AuditEntry.account_id == account_id)
        if before_id:
            statement = statement.where(AuditEntry.id < before_id)
        async with self._engine.connect() as conn:
            return [AuditEntry(**row._mapping) for row in await conn.execute(statement)]

    async def notices(self, account_id: str) -> list[AccountNotice]:
        statement = (
            select(AccountNotice)
            .where(AccountNotice.account_id == account_id)
            .order_by(AccountNotice.id.desc())
            .limit(50)
        )
        async with self._engine.connect() as conn:
            return [AccountNotice(**row._mapping) for row in await conn.execute(statement)]
