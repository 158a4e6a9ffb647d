"""Stripe webhook deliveries: verified, then turned into at most one purchase entry per session.

Stripe delivers at least once, late, concurrently and in any order, so "exactly once" comes from
the ledger, not from bookkeeping here: every event of one Checkout Session maps to the same
idempotency key, and the ledger's unique key makes the first one that commits the only entry.

Only paid sessions are credited: `checkout.session.completed` with payment_status "paid", or
`checkout.session.async_payment_succeeded` (a delayed method such as a bank debit cleared).

Provenance: a signature proves only that Stripe sent the event, not that Kyma sold anything —
the same Stripe account may sell other products, and a Payment Link lets the buyer set
`client_reference_id`. So a paid session is credited only when Kyma created it
(`checkout_sessions`, written by `checkout.py`) for the account the session names in
`client_reference_id`, at the amount and currency Kyma created it with; what is credited is the
recorded amount to the recorded account. `metadata.account_id` or `client_reference_id` alone
never credits. Any other paid session is recorded in `ignored_payments` (one row per event, so
replays do not pile up) with the reason, logged as a warning (ids and amounts only, never the
signature or a secret), and answered as IGNORED rather than as an error: Stripe retries failed
deliveries for days and a retry could never succeed.

Refused with InvalidRequest (HTTP 400), changing nothing: a bad signature, a signature
timestamped more than the tolerance in the past or in the future, a body that is not a Stripe
event, and an `amount_total` that no Stripe session can have (not a JSON integer, negative, or
more than twelve digits) — such a number would otherwise overflow the ledger's arithmetic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.account_events import ACCOUNT_CHANGED, AccountEvents
from core_service.billing.ledger import SYSTEM_PURCHASES, EntryKind, Transfer, post_in
from core_service.billing.pricing import NANOS_PER_USD
from core_service.clock import Clock
from core_service.db.models import CheckoutSession, IgnoredPayment
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
_MAX_ID_CHARS = 150
# The largest amount_total a Stripe session can carry: twelve digits (IDR's limit; USD's is
# eight). Anything beyond is not Stripe's, and would overflow nano-dollars in 64 bits.
MAX_STRIPE_AMOUNT = 999_999_999_999


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


@dataclass(frozen=True)
class SessionEvent:
    """A paid Checkout Session as one event describes it (every field as Stripe sent it)."""

    event_id: str
    event_type: str
    session_id: str | None
    client_reference_id: object
    metadata_account_id: object
    amount_total: int | None
    currency: object
    mode: object


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


def _amount(session: dict[str, Any]) -> int | None:
    """The session's amount_total, None when absent; InvalidRequest when no Stripe session could
    carry it (checked before anything else, so nothing is written for it)."""
    amount = session.get("amount_total")
    if amount is None:
        return None
    # bool is an int in Python; a JSON true is not an amount.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidRequest(
            "amount_total must be a whole number of the currency's smallest unit.",
            param="amount_total",
        )
    if not 0 <= amount <= MAX_STRIPE_AMOUNT:
        raise InvalidRequest(
            f"amount_total must be from 0 to {MAX_STRIPE_AMOUNT}.", param="amount_total"
        )
    return amount


def _text(value: object) -> str | None:
    return value[:_MAX_ID_CHARS] if isinstance(value, str) and value else None


def session_event(event: dict[str, Any]) -> SessionEvent | None:
    """The paid Checkout Session this event is about, or None when it is nothing to credit."""
    event_type = event.get("type")
    if event_type not in (COMPLETED, ASYNC_PAYMENT_SUCCEEDED):
        return None
    data = event.get("data")
    session = data.get("object") if isinstance(data, dict) else None
    if not isinstance(session, dict) or session.get("object") != "checkout.session":
        log.warning("Stripe event %s (%s) carries no Checkout Session", event.get("id"), event_type)
        return None
    amount = _amount(session)
    if not _is_paid(event_type, session):
        return None
    session_id = session.get("id")
    metadata = session.get("metadata")
    return SessionEvent(
        event_id=_text(event.get("id")) or f"unnamed:{_text(session_id)}",
        event_type=str(event_type),
        session_id=(
            session_id
            if isinstance(session_id, str) and 0 < len(session_id) <= _MAX_ID_CHARS
            else None
        ),
        client_reference_id=session.get("client_reference_id"),
        metadata_account_id=metadata.get("account_id") if isinstance(metadata, dict) else None,
        amount_total=amount,
        currency=session.get("currency"),
        mode=session.get("mode", "payment"),
    )


def refusal(paid: SessionEvent, created: CheckoutSession | None) -> str | None:
    """Why this paid session must not be credited, or None when Kyma created it as it is."""
    if paid.session_id is None:
        return "the session id is missing or malformed"
    if created is None:
        return "Kyma did not create this Checkout Session"
    if paid.client_reference_id != created.account_id:
        return "the session names another account than the one Kyma created it for"
    if paid.metadata_account_id not in (None, created.account_id):
        return "the session's metadata names another account than the one Kyma created it for"
    if paid.mode != "payment":
        return "the session is not a one-off payment"
    if not isinstance(paid.currency, str) or paid.currency.lower() != created.currency:
        return f"the session was paid in another currency than {created.currency}"
    if paid.amount_total != created.amount_cents:
        return f"the session's amount is not the {created.amount_cents} cents Kyma created it for"
    return None


async def record_ignored(
    conn: AsyncConnection, paid: SessionEvent, reason: str, now: datetime
) -> None:
    """One row per Stripe event: a replayed event is recorded once."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    named = paid.client_reference_id or paid.metadata_account_id
    currency = paid.currency
    await conn.execute(
        dialect.insert(IgnoredPayment)
        .values(
            event_id=paid.event_id,
            event_type=paid.event_type,
            session_id=paid.session_id,
            account_id=_text(named),
            amount_total=paid.amount_total,
            currency=currency[:16] if isinstance(currency, str) else None,
            reason=reason,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


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
            raise ValueError("the webhook timestamp tolerance must be positive")
        self._engine = engine
        self._clock = clock
        self._secret = webhook_secret or None
        self._tolerance = tolerance_seconds
        self._events = events

    async def handle(self, payload: bytes, signature: str) -> WebhookOutcome:
        """Verify one delivery and act on it."""
        event = self._verified_event(payload, signature)
        paid = session_event(event)
        if paid is None:
            return WebhookOutcome.IGNORED
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(CheckoutSession).where(CheckoutSession.id == paid.session_id)
                )
            ).one_or_none()
            created = None if row is None else CheckoutSession(**row._mapping)
            why = refusal(paid, created)
            if why is not None:
                await record_ignored(conn, paid, why, self._clock.now())
        if why is not None or created is None:  # (never None without a reason; for the types)
            log.warning(
                "Stripe Checkout Session %s (event %s, naming account %r, amount_total %s %r) "
                "not credited: %s",
                paid.session_id,
                paid.event_id,
                _text(paid.client_reference_id or paid.metadata_account_id),
                paid.amount_total,
                paid.currency if isinstance(paid.currency, str) else None,
                why,
            )
            return WebhookOutcome.IGNORED
        return await self._credit(
            PaidSession(
                session_id=created.id,
                account_id=created.account_id,
                amount_cents=created.amount_cents,
            )
        )

    async def _credit(self, paid: PaidSession) -> WebhookOutcome:
        try:
            async with self._engine.begin() as conn:
                posted = await post_in(conn, purchase_transfer(paid), self._clock.now())
                if posted.created and self._events is not None:
                    # Its tier may rise: every node looks the account up afresh.
                    await self._events.record_in(conn, ACCOUNT_CHANGED, account_id=paid.account_id)
        except NotFound:
            # Only possible if the account's balance row went away after the session was made.
            log.warning(
                "Stripe Checkout Session %s: account %s has no balance; not crediting",
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

    async def ignored(self, *, limit: int) -> list[IgnoredPayment]:
        """The paid sessions that were recorded and not credited, newest first."""
        statement = select(IgnoredPayment).order_by(IgnoredPayment.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [IgnoredPayment(**row._mapping) for row in await conn.execute(statement)]

    def _verified_event(self, payload: bytes, signature: str) -> dict[str, Any]:
        if self._secret is None:
            # Answered as unavailable, not as bad input: Stripe keeps retrying, and the events
            # are credited once the operator sets the signing secret.
            raise BillingNotConfigured("Stripe webhooks are not configured on this Kyma.")
        refused = InvalidRequest(
            "The Stripe-Signature header does not match this body, or its timestamp is not "
            "within the tolerance.",
            param="Stripe-Signature",
        )
        import stripe  # here: a large import that a Kyma without purchases never needs

        try:
            # Checks the HMAC over "<timestamp>.<body>"; the age is checked below, both ways,
            # on the injected clock (the library checks only the past, on its own clock).
            stripe.WebhookSignature.verify_header(payload, signature, self._secret, None)
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            raise refused from None
        # A captured delivery cannot be replayed later, nor one signed ahead of time be held
        # back and used after the signing secret was rotated.
        skew = signed_at(signature) - self._clock.now().timestamp()
        if abs(skew) > self._tolerance:
            raise refused
        try:
            # orjson: nesting is bounded (json.loads recurses into a RecursionError, a 500), and
            # an integer beyond 64 bits comes back as a float, which no amount check accepts.
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            raise InvalidRequest("The webhook body is not a Stripe event.")
        return event


def signed_at(header: str) -> int:
    """The timestamp of a Stripe-Signature header that verified: its first `t=` element, read
    as the stripe library reads it when it checks the signature."""
    items = [item.split("=", 2) for item in header.split(",")]
    return int([item[1] for item in items if item[0] == "t"][0])
