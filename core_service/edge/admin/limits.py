"""Admin RPCs on limits: an account's tier and what is left of its limits; pinning a tier."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator
from core_service.accounts.store import AccountStore
from core_service.billing.ledger import Ledger
from core_service.edge.messages.limits import rate_limit_message, tier_message
from core_service.edge.messages.money import money
from core_service.errors import InvalidRequest, NotFound
from core_service.ratelimit.limiter import AccountLimiter
from core_service.ratelimit.tiers import TierTable
from kyma.admin.v1 import admin_service_pb2 as pb


class LimitAdmin:
    def __init__(
        self,
        store: AccountStore,
        authenticator: Authenticator,
        limiter: AccountLimiter,
        tiers: TierTable,
        ledger: Ledger,
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._limiter = limiter
        self._tiers = tiers
        self._ledger = ledger

    async def GetAccountLimits(
        self, request: pb.GetAccountLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountLimitsResponse:
        principal = await self._authenticator.principal_for_account(request.account_id)
        snapshot = await self._limiter.status(principal, request.model)
        balance = await self._ledger.balance(request.account_id)
        return pb.GetAccountLimitsResponse(
            limits=tier_message(principal),
            status=rate_limit_message(snapshot),
            shared=self._limiter.shared,
            total_purchased=money(balance.total_purchased_nanos),
        )

    async def PinTier(
        self, request: pb.PinTierRequest, context: grpc.aio.ServicerContext
    ) -> pb.PinTierResponse:
        tier = request.tier if request.HasField("tier") else None
        if tier is not None and self._tiers.get(tier) is None:
            known = ", ".join(str(t.tier) for t in self._tiers)
            raise InvalidRequest(f"No tier {tier}; the tiers are {known}.", param="tier")
        if not await self._store.pin_tier(request.account_id, tier):
            raise NotFound(f"No account {request.account_id}.", param="account_id")
        principal = await self._authenticator.principal_for_account(request.account_id)
        return pb.PinTierResponse(limits=tier_message(principal))
