"""Proving the ledger consistent: `kyma admin ledger verify`, and run after the tests.

Checks, each reported as a readable problem line:
- every entry moves a positive amount between two different accounts (so debits equal credits);
- each customer's balance row equals the replay of its entries, and its total purchased equals
  the sum of its purchase entries;
- each customer's held amount equals the sum of its open holds, and 0 <= held <= balance;
  likewise each key's held amount (its spend row, which its cap is decided against);
- every hold ended exactly once: settled holds (and expired ones, settled at their last
  checkpoint) have one usage entry no larger than the hold (none when they charged nothing);
  released holds have none; no hold stays open long past its expiry once its node is gone;
- what people see agrees with what was charged, to the nano-dollar: each account's daily
  usage adds up to its usage entries, and every request log row of a settled hold shows the
  cost the hold was charged (rows may be missing — the log drops rather than slows a request
  — but never disagree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.db.models import (
    Balance,
    CoreNode,
    CreditHold,
    KeySpend,
    LedgerEntry,
    UsageDaily,
)
from core_service.logs.query import REQUEST_LOGS


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    accounts: int = 0
    holds: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_ledger(
    engine: AsyncEngine, clock: Clock, *, expiry_slack_seconds: float = 60
) -> Verification:
    report = Verification()
    async with engine.connect() as conn:
        report.entries = await conn.scalar(select(func.count()).select_from(LedgerEntry)) or 0
        bad = await conn.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(
                (LedgerEntry.amount_nanos <= 0)
                | (LedgerEntry.debit_account == LedgerEntry.credit_account)
            )
        )
        if bad:
            report.problems.append(
                f"{bad} entries with a non-positive amount or one account on both sides"
            )

        credits = select(
            LedgerEntry.credit_account.label("account"),
            LedgerEntry.amount_nanos.label("delta"),
            case((LedgerEntry.kind == "purchase", LedgerEntry.amount_nanos), else_=0).label(
                "purchased"
            ),
        )
        debits = select(
            LedgerEntry.debit_account.label("account"),
            (-LedgerEntry.amount_nanos).label("delta"),
            case((LedgerEntry.kind == "purchase", -LedgerEntry.amount_nanos), else_=0).label(
                "purchased"
            ),
        )
        movements = credits.union_all(debits).subquery()
        replay = {
            row.account: (int(row.balance), int(row.purchased))
            for row in await conn.execute(
                select(
                    movements.c.account,
                    func.sum(movements.c.delta).label("balance"),
                    func.sum(movements.c.purchased).label("purchased"),
                ).group_by(movements.c.account)
            )
        }
        open_holds = {
            row.account_id: int(row.held)
            for row in await conn.execute(
                select(CreditHold.account_id, func.sum(CreditHold.amount_nanos).label("held"))
                .where(CreditHold.status == "open")
                .group_by(CreditHold.account_id)
            )
        }
        balances = (await conn.execute(select(Balance))).all()
        report.accounts = len(balances)
        for row in balances:
            account = row.ledger_account
            expected_balance, expected_purchased = replay.get(account, (0, 0))
            if row.balance_nanos != expected_balance:
                report.problems.append(
                    f"{account}: balance {row.balance_nanos} but its entries add up to {expected_balance}"
                )
            if row.total_purchased_nanos != expected_purchased:
                report.problems.append(
                    f"{account}: total purchased {row.total_purchased_nanos} but purchases add up to {expected_purchased}"
                )
            if row.held_nanos != open_holds.get(account, 0):
                report.problems.append(
                    f"{account}: held {row.held_nanos} but open holds add up to {open_holds.get(account, 0)}"
                )
            if not 0 <= row.held_nanos <= row.balance_nanos:
                report.problems.append(
                    f"{account}: held {row.held_nanos} outside 0..balance {row.balance_nanos}"
                )
        known = {row.ledger_account for row in balances}
        for account in replay:
            if not account.startswith("system:") and account not in known:
                report.problems.append(f"{account}: entries but no balance row")

        key_held = (
            select(CreditHold.key_id, func.sum(CreditHold.amount_nanos).label("held"))
            .where(CreditHold.status == "open", CreditHold.key_id.is_not(None))
            .group_by(CreditHold.key_id)
            .subquery()
        )
        for row in await conn.execute(
            select(KeySpend.key_id, KeySpend.held_nanos, key_held.c.held)
            .outerjoin(key_held, key_held.c.key_id == KeySpend.key_id)
            .where(KeySpend.held_nanos != func.coalesce(key_held.c.held, 0))
            .limit(100)
        ):
            report.problems.append(
                f"key {row.key_id}: holds {row.held_nanos} but its open holds add up to "
                f"{int(row.held or 0)}"
            )
        usage_entries = (
            select(
                LedgerEntry.reference,
                func.count().label("n"),
                func.sum(LedgerEntry.amount_nanos).label("total"),
            )
            .where(LedgerEntry.kind == "usage")
            .group_by(LedgerEntry.reference)
            .subquery()
        )
        holds = (
            await conn.execute(
                select(
                    CreditHold.id,
                    CreditHold.status,
                    CreditHold.amount_nanos,
                    CreditHold.charged_nanos,
                    CreditHold.expires_at,
                    CoreNode.heartbeat_at,
                    usage_entries.c.n,
                    usage_entries.c.total,
                )
                .outerjoin(usage_entries, usage_entries.c.reference == CreditHold.id)
                .outerjoin(CoreNode, CoreNode.node_id == CreditHold.node_id)
            )
        ).all()
        usage_totals = {
            row.account_id: int(row.cost)
            for row in await conn.execute(
                select(
                    UsageDaily.account_id, func.sum(UsageDaily.cost_nanos).label("cost")
                ).group_by(UsageDaily.account_id)
            )
        }
        charged_totals = {
            row.debit_account: int(row.total)
            for row in await conn.execute(
                select(LedgerEntry.debit_account, func.sum(LedgerEntry.amount_nanos).label("total"))
                .where(LedgerEntry.kind == "usage")
                .group_by(LedgerEntry.debit_account)
            )
        }
        # A gRPC caller may choose its request ids, and reuse one: only ids that name one hold
        # and one log row can be compared.
        single_holds = (
            select(CreditHold.request_id)
            .group_by(CreditHold.request_id)
            .having(func.count() == 1)
            .subquery()
        )
        single_logs = (
            select(REQUEST_LOGS.c.request_id)
            .group_by(REQUEST_LOGS.c.request_id)
            .having(func.count() == 1)
            .subquery()
        )
        logged = (
            await conn.execute(
                select(
                    REQUEST_LOGS.c.request_id, REQUEST_LOGS.c.cost_nanos, CreditHold.charged_nanos
                )
                .join(CreditHold, CreditHold.request_id == REQUEST_LOGS.c.request_id)
                .join(single_holds, single_holds.c.request_id == CreditHold.request_id)
                .join(single_logs, single_logs.c.request_id == REQUEST_LOGS.c.request_id)
                .where(
                    CreditHold.status == "settled",
                    REQUEST_LOGS.c.cost_nanos != CreditHold.charged_nanos,
                )
                .limit(100)
            )
        ).all()
    for account in sorted(set(usage_totals) | set(charged_totals)):
        shown, charged = usage_totals.get(account, 0), charged_totals.get(account, 0)
        if shown != charged:
            report.problems.append(
                f"{account}: daily usage shows {shown} but usage entries charged {charged}"
            )
    for row in logged:
        report.problems.append(
            f"request {row.request_id}: the request log shows a cost of {row.cost_nanos} but "
            f"its hold was charged {row.charged_nanos}"
        )
    report.holds = len(holds)
    stale = clock.now() - timedelta(seconds=expiry_slack_seconds)
    for hold in holds:
        entries, charged = int(hold.n or 0), int(hold.total or 0)
        if hold.status in ("settled", "expired"):
            # An expired hold was settled at its last checkpoint (often nothing), and may
            # carry a second entry: a late settlement's correction.
            expected: tuple[int, ...] = (1, 2) if hold.status == "expired" else (1,)
            if (hold.charged_nanos or 0) == 0:
                expected = (0,)
            if entries not in expected or charged != (hold.charged_nanos or 0):
                report.problems.append(
                    f"hold {hold.id}: {hold.status} for {hold.charged_nanos} but has {entries} "
                    f"usage entries totalling {charged}"
                )
            if charged > hold.amount_nanos:
                report.problems.append(
                    f"hold {hold.id}: charged {charged}, more than its {hold.amount_nanos}"
                )
        elif hold.status == "released":
            if entries:
                report.problems.append(f"hold {hold.id}: released but has {entries} usage entries")
        elif hold.status == "open":
            if entries:
                report.problems.append(f"hold {hold.id}: open but already has usage entries")
            abandoned = hold.heartbeat_at is None or hold.heartbeat_at < stale
            if hold.expires_at < stale and abandoned:
                report.problems.append(
                    f"hold {hold.id}: open long past its expiry, and its node is gone"
                )
        else:
            report.problems.append(f"hold {hold.id}: unknown status {hold.status!r}")
    return report
