"""The enforcement and directory RPCs of AdminService (mixed into AdminServicer)."""

from __future__ import annotations

from datetime import UTC

import grpc

from core_service.accounts.messages import (
    account_message,
    key_message,
    notice_message,
    timestamp,
)
from core_service.accounts.store import AccountStore
from core_service.admin.directory import AccountDirectory, Listed
from core_service.admin.enforcement import Enforcement
from core_service.billing.ledger import Ledger
from core_service.billing.messages import balance_message
from core_service.db.models import AuditEntry
from core_service.errors import InvalidRequest
from core_service.grpc_errors import translated
from core_service.ratelimit.service import tier_message
from core_service.referrals.messages import referral_message
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.admin.v1 import admin_service_pb2 as pb

_STATUS_NAMES = {
    accounting_pb.ACCOUNT_STATUS_ACTIVE: "active",
    accounting_pb.ACCOUNT_STATUS_SUSPENDED: "suspended",
    accounting_pb.ACCOUNT_STATUS_BANNED: "banned",
}


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


def _page(size: int) -> int:
    if size == 0:
        return 100
    if not 1 <= size <= 500:
        raise InvalidRequest("page_size must be 1 to 500.", param="page_size")
    return size


class EnforcementRpcs:
    """Needs `_check`, `_store`, `_ledger`, `_enforcement`, `_directory` and `_principal` from the
    servicer it is mixed into."""

    _store: AccountStore
    _ledger: Ledger
    _enforcement: Enforcement
    _directory: AccountDirectory

    def _summary(self, listed: Listed) -> pb.AccountSummary:
        account = listed.account
        return pb.AccountSummary(
            account=account_message(account, tier=0),
            signup_ip=account.signup_ip or "",
            signup_fingerprint=account.signup_fingerprint or "",
            sharing_signals=listed.sharing_signals,
        )

    async def _account(self, account_id: str) -> accounting_pb.Account:
        principal = await self._principal(account_id)  # type: ignore[attr-defined]
        account = await self._store.get_account(account_id)
        assert account is not None
        return account_message(account, tier=principal.tier.tier)

    @translated
    async def WarnAccount(
        self, request: pb.WarnAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.WarnAccountResponse:
        self._check(context)  # type: ignore[attr-defined]
        entry = await self._enforcement.warn(
            request.account_id,
            request.message,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.WarnAccountResponse(audit=audit_message(entry))

    @translated
    async def ResetCredits(
        self, request: pb.ResetCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetCreditsResponse:
        self._check(context)  # type: ignore[attr-defined]
        _, entry = await self._enforcement.reset_credits(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        balance = await self._ledger.balance(request.account_id)
        return pb.ResetCreditsResponse(balance=balance_message(balance), audit=audit_message(entry))

    @translated
    async def SuspendAccount(
        self, request: pb.SuspendAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.SuspendAccountResponse:
        self._check(context)  # type: ignore[attr-defined]
        if not request.HasField("until"):
            raise InvalidRequest("A suspension needs an end time ('until').", param="until")
        until = request.until.ToDatetime(tzinfo=UTC)
        entry = await self._enforcement.suspend(
            request.account_id,
            until,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.SuspendAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    @translated
    async def BanAccount(
        self, request: pb.BanAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.BanAccountResponse:
        self._check(context)  # type: ignore[attr-defined]
        entry = await self._enforcement.ban(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.BanAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    @translated
    async def ReinstateAccount(
        self, request: pb.ReinstateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReinstateAccountResponse:
        self._check(context)  # type: ignore[attr-defined]
        entry = await self._enforcement.reinstate(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.ReinstateAccountResponse(
            account=await self._account(request.account_id), audit=audit_message(entry)
        )

    @translated
    async def RevokeReferrals(
        self, request: pb.RevokeReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeReferralsResponse:
        self._check(context)  # type: ignore[attr-defined]
        entry = await self._enforcement.revoke_referrals(
            request.account_id,
            actor=_actor(request.justification),
            reason=request.justification.reason,
        )
        return pb.RevokeReferralsResponse(audit=audit_message(entry))

    @translated
    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        self._check(context)  # type: ignore[attr-defined]
        entries = await self._enforcement.audit_entries(
            request.account_id or None,
            limit=_page(request.page_size),
            before_id=request.before_id or None,
        )
        return pb.ListAuditEntriesResponse(entries=[audit_message(e) for e in entries])

    @translated
    async def ListAllReferrals(
        self, request: pb.ListAllReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAllReferralsResponse:
        self._check(context)  # type: ignore[attr-defined]
        program = self._referrals  # type: ignore[attr-defined]
        views = await program.list(
            flagged_only=request.flagged_only, limit=_page(request.page_size)
        )
        return pb.ListAllReferralsResponse(
            referrals=[
                referral_message(v, tokens_required=program.policy.tokens_required, reveal=True)
                for v in views
            ]
        )

    @translated
    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccountsResponse:
        self._check(context)  # type: ignore[attr-defined]
        listed = await self._directory.list(
            status=_STATUS_NAMES.get(request.status),
            shared_signals=request.shared_signals,
            limit=_page(request.page_size),
            after_id=request.after_id or None,
        )
        return pb.ListAccountsResponse(accounts=[self._summary(item) for item in listed])

    @translated
    async def GetAccountDetails(
        self, request: pb.GetAccountDetailsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountDetailsResponse:
        self._check(context)  # type: ignore[attr-defined]
        listed, related = await self._directory.details(request.account_id)
        principal = await self._principal(request.account_id)  # type: ignore[attr-defined]
        summary = self._summary(listed)
        summary.account.tier = principal.tier.tier
        return pb.GetAccountDetailsResponse(
            summary=summary,
            balance=balance_message(await self._ledger.balance(request.account_id)),
            limits=tier_message(principal),
            keys=[key_message(k) for k in await self._store.list_keys(request.account_id)],
            notices=[
                notice_message(n) for n in await self._enforcement.notices(request.account_id)
            ],
            related=[self._summary(item) for item in related],
            referrals_revoked=bool(listed.account.referrals_revoked),
        )
