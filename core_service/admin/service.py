"""AdminService over gRPC: operators' actions, behind the admin token."""

from __future__ import annotations

import secrets
from decimal import Decimal, InvalidOperation

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.auth import Authenticator, Principal
from core_service.accounts.emails import parse_email
from core_service.accounts.messages import account_message, key_message
from core_service.accounts.names import key_name
from core_service.accounts.store import AccountStore
from core_service.admin.auth import AdminGuard
from core_service.admin.directory import AccountDirectory
from core_service.admin.enforcement import Enforcement
from core_service.admin.enforcement_rpcs import EnforcementRpcs
from core_service.admin.logs_rpcs import LogRpcs
from core_service.admin.routing_rpcs import RoutingRpcs
from core_service.billing.ledger import SYSTEM_ADJUSTMENTS, EntryKind, Ledger, Transfer
from core_service.billing.messages import balance_message, entry_message, money
from core_service.billing.pricing import usd_to_nanos
from core_service.billing.verify import verify_ledger
from core_service.catalog import CatalogHolder
from core_service.clock import Clock
from core_service.errors import InvalidRequest, NotFound
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value
from core_service.logs.query import RequestLogQuery
from core_service.logs.retention import LogRetention
from core_service.ratelimit.limiter import AccountLimiter
from core_service.ratelimit.service import status_message, tier_message
from core_service.ratelimit.tiers import TierTable
from core_service.referrals.program import ReferralProgram
from core_service.routing.router import Router
from kyma.admin.v1 import admin_service_pb2 as pb
from kyma.admin.v1 import admin_service_pb2_grpc as pb_grpc

MAX_REASON = 500
# No single adjustment moves more than this; larger ones are almost surely a typo.
MAX_ADJUSTMENT_USD = Decimal("100000")


def adjustment_nanos(text: str) -> int:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidRequest(
            "amount_usd must be a decimal number of USD.", param="amount_usd"
        ) from None
    if not amount.is_finite() or amount == 0 or abs(amount) > MAX_ADJUSTMENT_USD:
        raise InvalidRequest(
            f"amount_usd must be non-zero and at most {MAX_ADJUSTMENT_USD} either way.",
            param="amount_usd",
        )
    try:
        return usd_to_nanos(amount)
    except ValueError:
        raise InvalidRequest(
            "amount_usd is finer than a nano-dollar.", param="amount_usd"
        ) from None


class AdminServicer(EnforcementRpcs, RoutingRpcs, LogRpcs, pb_grpc.AdminServiceServicer):
    def __init__(
        self,
        guard: AdminGuard,
        store: AccountStore,
        ledger: Ledger,
        engine: AsyncEngine,
        clock: Clock,
        *,
        authenticator: Authenticator,
        limiter: AccountLimiter,
        tiers: TierTable,
        enforcement: Enforcement,
        directory: AccountDirectory,
        router: Router,
        catalogue: CatalogHolder,
        referrals: ReferralProgram,
        log_query: RequestLogQuery,
        retention: LogRetention,
    ) -> None:
        self._referrals = referrals
        self._log_query = log_query
        self._retention = retention
        self._router = router
        self._catalogue = catalogue
        self._enforcement = enforcement
        self._directory = directory
        self._authenticator = authenticator
        self._limiter = limiter
        self._tiers = tiers
        self._guard = guard
        self._store = store
        self._ledger = ledger
        self._engine = engine
        self._clock = clock

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        self._guard.check(metadata_value(context, "authorization"))

    @translated
    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAccountResponse:
        self._check(context)
        created = await self._store.create_account(
            parse_email(request.email), key_name=key_name(request.key_name)
        )
        return pb.CreateAccountResponse(
            account=account_message(created.account, tier=0),
            api_key=key_message(created.key),
            api_key_secret=created.secret,
        )

    @translated
    async def AdjustCredits(
        self, request: pb.AdjustCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdjustCreditsResponse:
        self._check(context)
        reason = request.reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidRequest("A reason (up to 500 characters) is required.", param="reason")
        amount = adjustment_nanos(request.amount_usd)
        if await self._store.get_account(request.account_id) is None:
            raise NotFound(f"No account {request.account_id}.", param="account_id")
        account = request.account_id
        debit, credit = (
            (SYSTEM_ADJUSTMENTS, account) if amount > 0 else (account, SYSTEM_ADJUSTMENTS)
        )
        key = request.idempotency_key.strip() or f"generated:{secrets.token_hex(12)}"
        posted = await self._ledger.post(
            Transfer(
                idempotency_key=f"adjust:{key}"[:200],
                kind=EntryKind.ADJUSTMENT,
                debit_account=debit,
                credit_account=credit,
                amount_nanos=abs(amount),
                actor=f"admin:{request.actor.strip() or 'unknown'}"[:100],
                reason=reason,
            )
        )
        entry = await self._ledger.entry(posted.entry_id)
        return pb.AdjustCreditsResponse(
            entry=entry_message(entry, account),
            balance=balance_message(await self._ledger.balance(account)),
            created=posted.created,
        )

    @translated
    async def GetAccountLimits(
        self, request: pb.GetAccountLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountLimitsResponse:
        self._check(context)
        principal = await self._principal(request.account_id)
        snapshot = await self._limiter.status(principal, request.model)
        balance = await self._ledger.balance(request.account_id)
        return pb.GetAccountLimitsResponse(
            limits=tier_message(principal),
            status=status_message(snapshot),
            shared=self._limiter.shared,
            total_purchased=money(balance.total_purchased_nanos),
        )

    @translated
    async def PinTier(
        self, request: pb.PinTierRequest, context: grpc.aio.ServicerContext
    ) -> pb.PinTierResponse:
        self._check(context)
        tier = request.tier if request.HasField("tier") else None
        if tier is not None and self._tiers.get(tier) is None:
            known = ", ".join(str(t.tier) for t in self._tiers)
            raise InvalidRequest(f"No tier {tier}; the tiers are {known}.", param="tier")
        if not await self._store.pin_tier(request.account_id, tier):
            raise NotFound(f"No account {request.account_id}.", param="account_id")
        return pb.PinTierResponse(limits=tier_message(await self._principal(request.account_id)))

    async def _principal(self, account_id: str) -> Principal:
        owner = await self._store.account_owner(account_id)
        if owner is None:
            raise NotFound(f"No account {account_id}.", param="account_id")
        return self._authenticator.principal_for(owner)

    @translated
    async def VerifyLedger(
        self, request: pb.VerifyLedgerRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyLedgerResponse:
        self._check(context)
        report = await verify_ledger(self._engine, self._clock)
        return pb.VerifyLedgerResponse(
            ok=report.ok,
            problems=report.problems,
            entries_checked=report.entries,
            accounts_checked=report.accounts,
            holds_checked=report.holds,
        )
