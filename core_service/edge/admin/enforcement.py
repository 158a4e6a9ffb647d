"""Admin RPCs of enforcement: warn, reset credits, suspend, ban, reinstate, revoke referral
privileges, and the audit log they write to."""

from __future__ import annotations

from datetime import UTC

import grpc

from core_service.accounts.auth import Authenticator
from core_service.accounts.store import AccountStore
from core_service.admin.enforcement import Enforcement
from core_service.billing.ledger import Ledger
from core_service.db.models import AuditEntry
from core_service.edge.admin.paging import page_size
from core_service.edge.messages.accounts import account_message, timestamp
from core_service.edge.messages.money import balance_message
from core_service.errors import InvalidRequest
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.admin.v1 import admin_service_pb2 as pb


def audit_message(entry: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(
        id=entry.id,
        actor=entry.actor,
        action=entry.action,
        account_id=entry.account_id or "",
        reason=entry.reason,
        details=entry.details,
        created_at=timestamp(entry.created_at),
    )


def _actor(justification: pb.Justification) -> str:
    return justification.actor.strip() or "unknown"


class EnforcementAdmin:
    def __init__(
        self,
        enforcement: Enforcement,
        store: AccountStore,
        authenticator: Authenticator,
        ledger: Ledger,
    ) -> None:
        self._enforcement = enforcement
        self._store = store
        self._authenticator = authenticator
        self._ledger = ledger

    async def _account(self, account_id: str) -> accounting_pb.Account:
        principal = await self._authenticator.principal_for_account(account_id)
        account = await self._store.get_account(account_id)
        assert account is not None  # the principal was just found
        return account_message(account, tier=principal.tier.tier)

    async def WarnAccount(
        self, request: pb.WarnAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.WarnAccountResponse:
        entry = await self._enforcement.warn(
            request.account_id,
            request.message,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.WarnAccountResponse(audit=audit_message(entry))

    async def ResetCredits(
        self, request: pb.ResetCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetCreditsResponse:
        _, entry = await self._enforcement.reset_credits(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        balance = await self._ledger.balance(request.account_id)
        return pb.ResetCreditsResponse(balance=balance_message(balance), audit=audit_message(entry))

    async def SuspendAccount(
        self, request: pb.SuspendAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.SuspendAccountResponse:
        if not request.HasField("until"):
            raise InvalidRequest("A suspension needs an end time ('until').", param="until")
        entry = await self._enforcement.suspend(
            request.account_id,
            request.until.ToDatetime(tzinfo=UTC),
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.SuspendAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    async def BanAccount(
        self, request: pb.BanAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.BanAccountResponse:
        entry = await self._enforcement.ban(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.BanAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    async def ReinstateAccount(
        self, request: pb.ReinstateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReinstateAccountResponse:
        entry = await self._enforcement.reinstate(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.ReinstateAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    async def RevokeReferrals(
        self, request: pb.RevokeReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeReferralsResponse:
        entry = await self._enforcement.revoke_referrals(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.RevokeReferralsResponse(audit=audit_message(entry))

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        entries = await self._enforcement.audit_entries(
            request.account_id or None,
            limit=page_size(request.page_size),
            before_id=request.before_id or None,
        )
        return pb.ListAuditEntriesResponse(entries=[audit_message(e) for e in entries])
