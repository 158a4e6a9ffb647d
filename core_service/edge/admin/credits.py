"""Admin RPCs on money: adjust a balance, verify the whole ledger."""

from __future__ import annotations

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.adjustments import adjust
from core_service.billing.ledger import Ledger
from core_service.billing.verify import verify_ledger
from core_service.clock import Clock
from core_service.edge.messages.money import balance_message, entry_message
from kyma.admin.v1 import admin_service_pb2 as pb


class CreditAdmin:
    def __init__(self, ledger: Ledger, engine: AsyncEngine, clock: Clock) -> None:
        self._ledger = ledger
        self._engine = engine
        self._clock = clock

    async def AdjustCredits(
        self, request: pb.AdjustCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdjustCreditsResponse:
        account = request.account_id
        posted = await adjust(
            self._ledger,
            account,
            request.amount_usd,
            reason=request.reason,
            actor=request.actor,
            idempotency_key=request.idempotency_key,
        )
        entry = await self._ledger.entry(posted.entry_id)
        return pb.AdjustCreditsResponse(
            entry=entry_message(entry, account),
            balance=balance_message(await self._ledger.balance(account)),
            created=posted.created,
        )

    async def VerifyLedger(
        self, request: pb.VerifyLedgerRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyLedgerResponse:
        report = await verify_ledger(self._engine, self._clock)
        return pb.VerifyLedgerResponse(
            ok=report.ok,
            problems=report.problems,
            entries_checked=report.entries,
            accounts_checked=report.accounts,
            holds_checked=report.holds,
        )
