"""Starting a credit purchase: a Stripe Checkout Session for a validated amount of US dollars.

Nothing is credited here. The account is credited only by the signed webhook once Stripe says the
session is paid (`core_service.billing.webhooks`), and only for a session recorded here: every
session Kyma creates is written to `checkout_sessions` (its id, account, amount and currency)
before its URL is handed out, so a session that was never recorded can never be paid through
Kyma, and a webhook cannot credit more, another currency, or another account than was recorded.
If that write fails (the database is away), the caller gets the error and never the URL; the
orphaned session at Stripe expires unpaid.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.db.models import CheckoutSession
from core_service.errors import BillingNotConfigured, InvalidRequest, PaymentProviderError

if TYPE_CHECKING:  # imported where used: the stripe package is a large import at start-up
    import stripe

log = logging.getLogger(__name__)

PRODUCT_NAME = "Kyma credits"
# Far longer than any sane amount; refused before any parsing so huge inputs cost nothing.
_MAX_AMOUNT_CHARS = 32
# Plain decimal notation only: Decimal() alone would also accept "1e3", "NaN", "Infinity",
# "1_000" and non-ASCII digits, none of which a user means as an amount of dollars.
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
# Stripe's ceiling for one Checkout Session in USD ($999,999.99).
_STRIPE_MAX_CENTS = 99_999_999
CURRENCY = "usd"
_EXAMPLE = 'such as "25" or "10.50"'


def parse_amount_usd(text: str, *, min_usd: Decimal, max_usd: Decimal) -> Decimal:
    """`text` as a whole number of cents within [min_usd, max_usd], or InvalidRequest saying why."""
    if len(text) > _MAX_AMOUNT_CHARS:
        raise InvalidRequest(
            f"amount_usd is too long; send an amount of US dollars {_EXAMPLE}.", param="amount_usd"
        )
    text = text.strip()
    if not text:
        raise InvalidRequest(
            f"amount_usd is required: the amount of US dollars to buy, {_EXAMPLE}.",
            param="amount_usd",
        )
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise InvalidRequest(
            f"amount_usd must be a plain decimal amount of US dollars {_EXAMPLE} "
            "(no exponent, NaN or Infinity).",
            param="amount_usd",
        )
    amount = Decimal(text)
    if amount <= 0:
        raise InvalidRequest("amount_usd must be greater than zero.", param="amount_usd")
    # Counted on the text, not with quantize(), which fails beyond the context's precision.
    if len(text.partition(".")[2].rstrip("0")) > 2:
        raise InvalidRequest(
            "amount_usd can have at most 2 decimal places (whole cents).", param="amount_usd"
        )
    if amount < min_usd:
        raise InvalidRequest(f"amount_usd must be at least ${min_usd:.2f}.", param="amount_usd")
    if amount > max_usd:
        raise InvalidRequest(f"amount_usd can be at most ${max_usd:.2f}.", param="amount_usd")
    return amount


def to_cents(amount_usd: Decimal) -> int:
    return int(amount_usd.scaleb(2))


class CheckoutSessions:
    """Creates Stripe Checkout Sessions; `stripe_client` None means purchases are switched off."""

    def __init__(
        self,
        stripe_client: stripe.StripeClient | None,
        engine: AsyncEngine,
        clock: Clock,
        *,
        success_url: str,
        cancel_url: str,
        min_usd: Decimal,
        max_usd: Decimal,
    ) -> None:
        if not Decimal("0.01") <= min_usd <= max_usd or to_cents(max_usd) > _STRIPE_MAX_CENTS:
            raise ValueError("checkout amounts need 0.01 <= min_usd <= max_usd <= 999999.99")
        self._stripe = stripe_client
        self._engine = engine
        self._clock = clock
        self._success_url = success_url
        self._cancel_url = cancel_url
        self._min_usd = min_usd
        self._max_usd = max_usd

    async def create(self, *, account_id: str, email: str, amount_usd: str) -> tuple[str, str]:
        """Start a purchase of `amount_usd`; returns (Checkout Session id, URL to pay at)."""
        if self._stripe is None:
            raise BillingNotConfigured("Purchases are not enabled on this Kyma.")
        import stripe  # already imported by whoever made the client

        amount = parse_amount_usd(amount_usd, min_usd=self._min_usd, max_usd=self._max_usd)
        try:
            session = await self._stripe.v1.checkout.sessions.create_async(
                self._params(account_id, email, amount)
            )
        except stripe.StripeError as error:
            # Stripe's own message can quote part of the secret key ("Invalid API Key provided:
            # sk_test_****"), so neither the log nor the caller gets it; the request id is
            # enough to look the failure up in Stripe's dashboard.
            log.warning(
                "Stripe refused to create a Checkout Session: %s (http status %s, code %s, "
                "request id %s)",
                type(error).__name__,
                error.http_status,
                error.code,
                error.request_id,
            )
            raise PaymentProviderError(
                "The payment provider could not start the checkout; try again in a minute."
            ) from None
        if not session.id or not session.url:
            log.warning("Stripe returned a Checkout Session without an id or URL")
            raise PaymentProviderError(
                "The payment provider could not start the checkout; try again in a minute."
            )
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(CheckoutSession).values(
                    id=session.id,
                    account_id=account_id,
                    amount_cents=to_cents(amount),
                    currency=CURRENCY,
                    created_at=self._clock.now(),
                )
            )
        return session.id, session.url

    def _params(self, account_id: str, email: str, amount: Decimal) -> Any:
        # Typed as Any: the stripe package's TypedDict for these params is stricter about
        # literal types than this plain, documented request needs to be.
        return {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": to_cents(amount),
                        "product_data": {
                            "name": PRODUCT_NAME,
                            "description": f"${amount:.2f} of Kyma API credit",
                        },
                    },
                }
            ],
            "client_reference_id": account_id,
            "customer_email": email,
            "metadata": {"account_id": account_id, "amount_usd": f"{amount:.2f}"},
            "success_url": self._success_url,
            "cancel_url": self._cancel_url,
        }
