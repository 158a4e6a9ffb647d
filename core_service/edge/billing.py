"""BillingService over gRPC: buying credits through Stripe Checkout, and Stripe's webhook."""

from __future__ import annotations

import grpc

from core_service.accounts.callers import Callers
from core_service.accounts.store import AccountStore
from core_service.billing.checkout import CheckoutSessions
from core_service.billing.webhooks import StripeWebhooks, WebhookOutcome
from core_service.clock import Clock, SystemClock
from core_service.edge.metadata import credentials
from core_service.errors import Unauthenticated
from core_service.standing import check_in_good_standing
from kyma.billing.v1 import billing_service_pb2 as pb
from kyma.billing.v1 import billing_service_pb2_grpc as pb_grpc

_OUTCOMES = {
    WebhookOutcome.IGNORED: pb.WEBHOOK_OUTCOME_IGNORED,
    WebhookOutcome.CREDITED: pb.WEBHOOK_OUTCOME_CREDITED,
    WebhookOutcome.ALREADY_CREDITED: pb.WEBHOOK_OUTCOME_ALREADY_CREDITED,
}


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(
        self,
        callers: Callers,
        store: AccountStore,
        checkout: CheckoutSessions,
        webhooks: StripeWebhooks,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._callers = callers
        self._store = store
        self._checkout = checkout
        self._webhooks = webhooks
        self._clock = clock or SystemClock()

    async def CreateCheckoutSession(
        self, request: pb.CreateCheckoutSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCheckoutSessionResponse:
        # A key, or a web session (with its CSRF token: buying is a change).
        caller = await self._callers.identify(credentials(context), changes=True)
        principal = caller.principal
        # A suspended or banned account buys nothing it could not use.
        check_in_good_standing(principal, self._clock.now())
        account = await self._store.get_account(principal.account_id)
        if account is None:
            # The key was cached on this node moments before its account went away.
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        session_id, url = await self._checkout.create(
            account_id=account.id, email=account.email, amount_usd=request.amount_usd
        )
        return pb.CreateCheckoutSessionResponse(session_id=session_id, url=url)

    async def HandleStripeWebhook(
        self, request: pb.HandleStripeWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.HandleStripeWebhookResponse:
        # No API key: the Stripe signature over the body is the authentication.
        outcome = await self._webhooks.handle(request.payload, request.signature)
        return pb.HandleStripeWebhookResponse(outcome=_OUTCOMES[outcome])
