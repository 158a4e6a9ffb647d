"""The credit ledger: append-only, double-entry, integer nano-dollars.

Every balance change is one `ledger_entries` row moving an amount from a debit account to a
credit account, with an idempotency key (unique): the same key twice makes one entry, the same
key with a different movement is refused. Customer balances are also kept in `balances`, updated
in the same transaction as their entries, because holds must be checked atomically against
them; `verify` proves they equal the replay of the entries. System accounts (`system:*`) keep no
balance row: they are the other side of every movement and are derived from the entries when
needed, so no single row becomes a hot spot under load.

Invariant for every customer, kept by every statement here: 0 <= held <= balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.clock import Clock
from core_service.db.models import Balance, LedgerEntry
from core_service.errors import IdempotencyConflict, InsufficientCredits, NotFound

SYSTEM_WELCOME_BONUS = "system:welcome_bonus"
SYSTEM_PURCHASES = "system:purchases"
SYSTEM_USAGE_REVENUE = "system:usage_revenue"
SYSTEM_REFERRAL_REWARDS = "system:referral_rewards"
SYSTEM_ADJUSTMENTS = "system:adjustments"


class EntryKind(StrEnum):
    WELCOME_BONUS = "welcome_bonus"
    PURCHASE = "purchase"
    USAGE = "usage"
    REFERRAL_REWARD = "referral_reward"
    ADJUSTMENT = "adjustment"
    CREDIT_RESET = "credit_reset"


@dataclass(frozen=True)
class Transfer:
    idempotency_key: str
    kind: EntryKind
    debit_account: str
    credit_account: str
    amount_nanos: int
    actor: str
    reason: str = ""
    reference: str | None = None


@dataclass(frozen=True)
class Posted:
    entry_id: int
    created: bool  # False: the key had been used already, for the same movement


@dataclass(frozen=True)
class BalanceView:
    balance_nanos: int
    held_nanos: int
    total_purchased_nanos: int

    @property
    def available_nanos(self) -> int:
        return self.balance_nanos - self.held_nanos


def is_system(ledger_account: str) -> bool:
    return ledger_account.startswith("system:")


async def _change_balance(conn: AsyncConnection, account: str, delta: int, purchased: int) -> None:
    """Apply one side of an entry to a customer's balance row; a debit must be covered by the
    available balance (balance − held), or nothing changes."""
    statement = (
        update(Balance)
        .where(Balance.ledger_account == account)
        .values(
            balance_nanos=Balance.balance_nanos + delta,
            total_purchased_nanos=Balance.total_purchased_nanos + purchased,
        )
    )
    if delta < 0:
        statement = statement.where(Balance.balance_nanos - Balance.held_nanos >= -delta)
    result = await conn.execute(statement)
    if result.rowcount != 1:
        exists = await conn.scalar(
            select(Balance.ledger_account).where(Balance.ledger_account == account)
        )
        if exists is None:
            raise NotFound(f"No ledger account {account}.")
        raise InsufficientCredits("The available balance does not cover this debit.")


async def post_in(conn: AsyncConnection, transfer: Transfer, now: datetime) -> Posted:
    """Post `transfer` inside the caller's transaction (a savepoint guards the idempotency key)."""
    if transfer.amount_nanos <= 0:
        raise ValueError("ledger amounts are positive; the direction is debit → credit")
    if transfer.debit_account == transfer.credit_account:
        raise ValueError("a transfer needs two different accounts")
    try:
        async with conn.begin_nested():
            entry_id = await conn.scalar(
                insert(LedgerEntry)
                .values(
                    idempotency_key=transfer.idempotency_key,
                    kind=transfer.kind.value,
                    debit_account=transfer.debit_account,
                    credit_account=transfer.credit_account,
                    amount_nanos=transfer.amount_nanos,
                    created_at=now,
                    actor=transfer.actor,
                    reason=transfer.reason,
                    reference=transfer.reference,
                )
                .returning(LedgerEntry.id)
            )
    except IntegrityError:
        existing = (
            await conn.execute(
                select(LedgerEntry).where(LedgerEntry.idempotency_key == transfer.idempotency_key)
            )
        ).one_or_none()
        if existing is None:
            raise
        same = (
            existing.debit_account == transfer.debit_account
            and existing.credit_account == transfer.credit_account
            and existing.amount_nanos == transfer.amount_nanos
            and existing.kind == transfer.kind.value
        )
        if not same:
            raise IdempotencyConflict(
                "This idempotency key was already used for a different ledger entry."
            ) from None
        return Posted(entry_id=existing.id, created=False)
    purchased = transfer.amount_nanos if transfer.kind is EntryKind.PURCHASE else 0
    if not is_system(transfer.debit_account):
        await _change_balance(conn, transfer.debit_account, -transfer.amount_nanos, 0)
    if not is_system(transfer.credit_account):
        await _change_balance(conn, transfer.credit_account, transfer.amount_nanos, purchased)
    assert entry_id is not None
    return Posted(entry_id=entry_id, created=True)


async def open_balance_in(conn: AsyncConnection, account_id: str) -> None:
    await conn.execute(
        insert(Balance).values(
            ledger_account=account_id, balance_nanos=0, held_nanos=0, total_purchased_nanos=0
        )
    )


class Ledger:
    def __init__(
        self, engine: AsyncEngine, clock: Clock, *, reads: AsyncEngine | None = None
    ) -> None:
        self._engine = engine
        self._reads = reads or engine
        self._clock = clock

    async def post(self, transfer: Transfer) -> Posted:
        async with self._engine.begin() as conn:
            return await post_in(conn, transfer, self._clock.now())

    async def balance(self, account_id: str) -> BalanceView:
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(select(Balance).where(Balance.ledger_account == account_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"No ledger account {account_id}.")
        return BalanceView(row.balance_nanos, row.held_nanos, row.total_purchased_nanos)

    async def entry(self, entry_id: int) -> LedgerEntry:
        async with self._reads.connect() as conn:
            row = (await conn.execute(select(LedgerEntry).where(LedgerEntry.id == entry_id))).one()
        return LedgerEntry(**row._mapping)

    async def entries(
        self, account_id: str, *, limit: int, before_id: int | None = None
    ) -> list[LedgerEntry]:
        """The account's entries, newest first, `limit` at most, older than `before_id`."""
        statement = (
            select(LedgerEntry)
            .where(
                (LedgerEntry.debit_account == account_id)
                | (LedgerEntry.credit_account == account_id)
            )
            .order_by(LedgerEntry.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            statement = statement.where(LedgerEntry.id < before_id)
        async with self._reads.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [LedgerEntry(**row._mapping) for row in rows]
