"""Stripe webhook deliveries: verified, then turned into at most one purchase entry per session.

Stripe delivers at least once, late, concurrently and in any order, so "exactly once" comes from
the ledger, not from bookkeeping here: every event of one Checkout Session maps to the same
idempotency key, and the ledger's unique key makes the first one that commits the only entry.

Only paid sessions are credited: `checkout.session.completed` with payment_status "paid", or
`checkout.session.async_payment_succeeded` (a delayed method such as a bank debit cleared).
A valid event that can never be credited (unknown account, no amount, not USD) is answered as
IGNORED rather than as an error, because Stripe retries failed deliveries for days and a retry
could never succeed; the warning in the log is what an operator acts on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.account_events import ACCOUNT_CHANGED, AccountEvents
from core_service.billing.ledger import (
    SYSTEM_PURCHASES,
    EntryKind,
    Transfer,
    is_system,
    post_in,
)
from core_service.billing.pricing import NANOS_PER_USD
from core_service.clock import Clock
from core_service.errors import (
    BillingNotConfigured,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
)

log = logging.getLogger(__name__)

COMPLETED = "checkout.session.completed"
ASYNC_PAYMENT_SUCCEEDED = "checkout.session.async_payment_succeeded"
_NANOS_PER_CENT = NANOS_PER_USD // 100
# Stripe's ids are ~70 characters; the ledger's idempotency key holds 200.
_MAX_SESSION_ID_CHARS = 150


class WebhookOutcome(StrEnum):
    """What a verified delivery did."""

    IGNORED = "ignored"  # nothing to credit (not a paid session of ours)
    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"  # this session was credited before


@dataclass(frozen=True)
class PaidSession:
    session_id: str
    account_id: str
    amount_cents: int


def purchase_transfer(paid: PaidSession) -> Transfer:
    dollars = Decimal(paid.amount_cents).scaleb(-2)
    return Transfer(
        idempotency_key=f"stripe:checkout:{paid.session_id}",
        kind=EntryKind.PURCHASE,
        debit_account=SYSTEM_PURCHASES,
        credit_account=paid.account_id,
        amount_nanos=paid.amount_cents * _NANOS_PER_CENT,
        actor="stripe",
        reason=f"Stripe purchase ${dollars:.2f}",
        reference=paid.session_id,
    )


def _is_paid(event_type: object, session: dict[str, Any]) -> bool:
    if event_type == ASYNC_PAYMENT_SUCCEEDED:
        return True
    # "unpaid" is a delayed payment method still pending: its async_payment_succeeded follows.
    return event_type == COMPLETED and session.get("payment_status") == "paid"


def _paid_session(event: dict[str, Any]) -> PaidSession | None:
    """The paid Checkout Session this event is about, or None when it is nothing to credit."""
    event_id = event.get("id")
    event_type = event.get("type")
    data = event.get("data")
    session = data.get("object") if isinstance(data, dict) else None
    if event_type not in (COMPLETED, ASYNC_PAYMENT_SUCCEEDED):
        return None
    if not isinstance(session, dict) or session.get("object") != "checkout.session":
        log.warning("Stripe event %s (%s) carries no Checkout Session", event_id, event_type)
        return None
    if not _is_paid(event_type, session):
        return None
    session_id = session.get("id")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_SESSION_ID_CHARS:
        log.warning(
            "Stripe event %s (%s): the session id is missing or malformed", event_id, event_type
        )
        return None
    if session.get("mode", "payment") != "payment":
        log.warning(
            "Stripe Checkout Session %s is not a one-off payment; not crediting", session_id
        )
        return None
    metadata = session.get("metadata")
    account_id = session.get("client_reference_id") or (
        metadata.get("account_id") if isinstance(metadata, dict) else None
    )
    if not isinstance(account_id, str) or not account_id or is_system(account_id):
        log.warning("Stripe Checkout Session %s names no Kyma account; not crediting", session_id)
        return None
    amount = session.get("amount_total")
    # bool is an int in Python; a JSON true is not an amount.
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        log.warning(
            "Stripe Checkout Session %s has no positive amount_total; not crediting", session_id
        )
        return None
    currency = session.get("currency")
    if not isinstance(currency, str) or currency.lower() != "usd":
        log.warning(
            "Stripe Checkout Session %s was paid in %r, not usd; not crediting",
            session_id,
            currency,
        )
        return None
    return PaidSession(session_id=session_id, account_id=account_id, amount_cents=amount)


class StripeWebhooks:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        webhook_secret: str | None,
        tolerance_seconds: int = 300,
        events: AccountEvents | None = None,
    ) -> None:
        if tolerance_seconds <= 0:
            # The stripe library treats a falsy tolerance as "accept any age".
            raise ValueError("the webhook timestamp tolerance must be positive")
        self._engine = engine
        self._clock = clock
        self._secret = webhook_secret or None
        self._tolerance = tolerance_seconds
        self._events = events

    async def handle(self, payload: bytes, signature: str) -> WebhookOutcome:
        """Verify one delivery and act on it."""
        event = self._verified_event(payload, signature)
        paid = _paid_session(event)
        if paid is None:
            return WebhookOutcome.IGNORED
        transfer = purchase_transfer(paid)
        try:
            async with self._engine.begin() as conn:
                posted = await post_in(conn, transfer, self._clock.now())
                if posted.created and self._events is not None:
                    # Its tier may rise: every node looks the account up afresh.
                    await self._events.record_in(conn, ACCOUNT_CHANGED, account_id=paid.account_id)
        except NotFound:
            # The customer has no balance row: not a Kyma account (of this installation).
            log.warning(
                "Stripe Checkout Session %s names unknown account %s; not crediting",
                paid.session_id,
                paid.account_id,
            )
            return WebhookOutcome.IGNORED
        except IdempotencyConflict:
            # Credited before with a different amount or account: the first entry stands.
            log.warning(
                "Stripe Checkout Session %s was credited before with other details; left as is",
                paid.session_id,
            )
            return WebhookOutcome.ALREADY_CREDITED
        if not posted.created:
            return WebhookOutcome.ALREADY_CREDITED
        log.info(
            "credited Stripe Checkout Session %s: %d cents to %s",
            paid.session_id,
            paid.amount_cents,
            paid.account_id,
        )
        return WebhookOutcome.CREDITED

    def _verified_event(self, payload: bytes, signature: str) -> dict[str, Any]:
        if self._secret is None:
            # Answered as unavailable, not as bad input: Stripe keeps retrying, and the events
            # are credited once the operator sets the signing secret.
            raise BillingNotConfigured("Stripe webhooks are not configured on this Kyma.")
        try:
            # Checks the HMAC over "<timestamp>.<body>" and that the timestamp is no older than
            # the tolerance, so a captured delivery cannot be replayed later.
            stripe.WebhookSignature.verify_header(payload, signature, self._secret, self._tolerance)
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            raise InvalidRequest(
                "The Stripe-Signature header does not match this body, or is too old.",
                param="Stripe-Signature",
            ) from None
        try:
            event = json.loads(payload)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise InvalidRequest("The webhook body is not a Stripe event.")
        return event
