"""Billing: holds and metering on the request path, usage reports, purchases through Stripe
(Checkout Sessions and the signed webhook), and low-balance alerts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core_service.account_events import AccountEvents
from core_service.billing.checkout import CheckoutSessions
from core_service.billing.holds import Holds
from core_service.billing.low_balance import LowBalanceAlerts
from core_service.billing.metering import Metering
from core_service.billing.usage import UsageReport
from core_service.billing.webhooks import StripeWebhooks
from core_service.clock import Clock
from core_service.composition.storage import Storage
from core_service.mail.mailer import Mailer
from core_service.settings import Settings

if TYPE_CHECKING:  # imported when purchases are on: the stripe package is a large import
    import stripe


@dataclass(frozen=True)
class Billing:
    holds: Holds
    metering: Metering
    usage: UsageReport
    checkout: CheckoutSessions
    webhooks: StripeWebhooks
    low_balance: LowBalanceAlerts


def _stripe_client(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> stripe.StripeClient | None:
    """The Stripe client (async, on its own HTTP client), or none when purchases are off."""
    if settings.stripe_secret_key is None:
        return None
    import stripe

    http = stripe.HTTPXClient(timeout=20)
    stack.push_async_callback(http.close_async)
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base},
        http_client=http,
        max_network_retries=2,
    )


def open_billing(
    settings: Settings,
    clock: Clock,
    stack: contextlib.AsyncExitStack,
    *,
    storage: Storage,
    longest_request_seconds: float,
    counted: Callable[[str], None],
    events: AccountEvents,
    mailer: Mailer,
) -> Billing:
    holds = Holds(
        storage.writer,
        storage.reads,
        clock,
        # A hold must outlive the longest request it may cover.
        ttl_seconds=max(settings.hold_ttl_seconds, longest_request_seconds + 60),
        lease=storage.lease,
        writes=storage.engine,
    )
    secret = settings.stripe_webhook_secret
    return Billing(
        holds=holds,
        metering=Metering(holds, counted=counted, clock=clock),
        usage=UsageReport(storage.engine, clock),
        checkout=CheckoutSessions(
            _stripe_client(settings, stack),
            storage.engine,
            clock,
            success_url=settings.checkout_urls[0],
            cancel_url=settings.checkout_urls[1],
            min_usd=settings.checkout_min_usd,
            max_usd=settings.checkout_max_usd,
        ),
        webhooks=StripeWebhooks(
            storage.engine,
            clock,
            webhook_secret=secret.get_secret_value() if secret else None,
            events=events,
        ),
        low_balance=LowBalanceAlerts(
            storage.engine,
            clock,
            mailer,
            charged=storage.writer.take_charged,
            billing_link=f"{settings.public_base_url.rstrip('/')}/console/billing",
        ),
    )
