"""Admin adjustments of a balance: a signed amount with a reason, posted as one ledger entry
(idempotent by its key), never more than MAX_ADJUSTMENT_USD either way."""

from __future__ import annotations

import secrets
from decimal import Decimal, InvalidOperation

from core_service.billing.ledger import (
    SYSTEM_ADJUSTMENTS,
    EntryKind,
    Ledger,
    Posted,
    Transfer,
)
from core_service.billing.pricing import usd_to_nanos
from core_service.errors import InvalidRequest, NotFound

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


async def adjust(
    ledger: Ledger,
    account_id: str,
    amount_usd: str,
    *,
    reason: str,
    actor: str,
    idempotency_key: str,
) -> Posted:
    """Add (positive) or remove (negative) credit; a removal cannot take credit that is held
    or not there. The same idempotency key posts once."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidRequest(
            f"A reason (up to {MAX_REASON} characters) is required.", param="reason"
        )
    amount = adjustment_nanos(amount_usd)
    debit, credit = (
        (SYSTEM_ADJUSTMENTS, account_id) if amount > 0 else (account_id, SYSTEM_ADJUSTMENTS)
    )
    key = idempotency_key.strip() or f"generated:{secrets.token_hex(12)}"
    transfer = Transfer(
        idempotency_key=f"adjust:{key}"[:200],
        kind=EntryKind.ADJUSTMENT,
        debit_account=debit,
        credit_account=credit,
        amount_nanos=abs(amount),
        actor=f"admin:{actor.strip() or 'unknown'}"[:100],
        reason=reason,
    )
    try:
        return await ledger.post(transfer)
    except NotFound:
        raise NotFound(f"No account {account_id}.", param="account_id") from None
