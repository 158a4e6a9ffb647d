"""Stripe webhooks: verified deliveries credit a paid Checkout Session that Kyma created exactly
once, on SQLite and PostgreSQL, however often, concurrently or out of order its events arrive;
any other paid session is recorded and ignored; impossible amounts and signatures out of the
tolerance (past or future) are refused and change nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.checkout import CheckoutSessions
from core_service.billing.ledger import SYSTEM_PURCHASES, BalanceView, Ledger
from core_service.billing.webhooks import (
    ASYNC_PAYMENT_SUCCEEDED,
    COMPLETED,
    StripeWebhooks,
    WebhookOutcome,
)
from core_service.clock import SystemClock
from core_service.db.models import IgnoredPayment, LedgerEntry
from core_service.errors import BillingNotConfigured, InvalidRequest
from kyma.billing.v1 import billing_service_pb2 as pb
from kyma.billing.v1 import billing_service_pb2_grpc
from tests.fakes.stripe_api import (
    WEBHOOK_SECRET,
    RunningFakeStripe,
    checkout_session,
    sign,
    signed_delivery,
    webhook_event,
)

# The stripe library posts its form body as `data=`; httpx 0.28 warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

NewAccount = Callable[[], Awaitable[tuple[str, str]]]  # the conftest fixtures
NewSession = Callable[..., Awaitable[tuple[str, dict[str, Any]]]]
CREDITED = WebhookOutcome.CREDITED
ALREADY = WebhookOutcome.ALREADY_CREDITED
IGNORED = WebhookOutcome.IGNORED
NANOS_PER_CENT = 10**7


async def balance(engine: AsyncEngine, account_id: str) -> BalanceView:
    return await Ledger(engine, SystemClock()).balance(account_id)


async def entries_for(engine: AsyncEngine, session_id: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(select(LedgerEntry).where(LedgerEntry.reference == session_id))
            ).all()
        )


async def count_entries(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


async def ignored_rows(engine: AsyncEngine, session_id: str | None) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(IgnoredPayment).where(IgnoredPayment.session_id == session_id)
                )
            ).all()
        )


async def ignored_event(engine: AsyncEngine, event_id: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(IgnoredPayment).where(IgnoredPayment.event_id == event_id)
                )
            ).all()
        )


async def count_ignored(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(IgnoredPayment)) or 0)


def delivery(event_type: str, session: dict[str, Any], **changes: Any) -> tuple[bytes, str]:
    return signed_delivery(webhook_event(event_type, session, **changes), WEBHOOK_SECRET)


async def test_a_paid_session_is_credited_as_a_purchase(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("25")

    outcome = await webhooks.handle(*delivery(COMPLETED, session, payment_status="paid"))

    assert outcome == CREDITED
    assert await balance(billing_engine, account_id) == BalanceView(
        balance_nanos=2500 * NANOS_PER_CENT,
        held_nanos=0,
        total_purchased_nanos=2500 * NANOS_PER_CENT,
    )
    [entry] = await entries_for(billing_engine, session["id"])
    assert entry.idempotency_key == f"stripe:checkout:{session['id']}"
    assert (entry.kind, entry.debit_account, entry.credit_account) == (
        "purchase",
        SYSTEM_PURCHASES,
        account_id,
    )
    assert (entry.amount_nanos, entry.actor, entry.reason) == (
        25 * 10**9,
        "stripe",
        "Stripe purchase $25.00",
    )


async def test_the_same_event_twice_credits_once(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("10")
    body, header = delivery(COMPLETED, session, payment_status="paid")

    assert await webhooks.handle(body, header) == CREDITED
    assert await webhooks.handle(body, header) == ALREADY

    assert len(await entries_for(billing_engine, session["id"])) == 1
    assert (await balance(billing_engine, account_id)).balance_nanos == 1000 * NANOS_PER_CENT


async def test_ten_concurrent_deliveries_credit_once(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("7")
    body, header = delivery(COMPLETED, session, payment_status="paid")

    outcomes = await asyncio.gather(*(webhooks.handle(body, header) for _ in range(10)))

    assert sorted(outcomes) == sorted([CREDITED] + [ALREADY] * 9)
    assert len(await entries_for(billing_engine, session["id"])) == 1
    view = await balance(billing_engine, account_id)
    assert view.balance_nanos == view.total_purchased_nanos == 700 * NANOS_PER_CENT


async def test_async_payment_twins_out_of_order_and_at_once_credit_once(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("50")
    succeeded = delivery(ASYNC_PAYMENT_SUCCEEDED, session, payment_status="paid")
    completed_paid = delivery(COMPLETED, session, payment_status="paid")
    completed_unpaid = delivery(COMPLETED, session, payment_status="unpaid")

    # The later event first, then both twins racing, then the stale "unpaid" one.
    assert await webhooks.handle(*succeeded) == CREDITED
    raced = await asyncio.gather(
        *(webhooks.handle(*d) for d in [completed_paid, succeeded, completed_paid, succeeded])
    )
    assert raced == [ALREADY] * 4
    assert await webhooks.handle(*completed_unpaid) == IGNORED

    assert len(await entries_for(billing_engine, session["id"])) == 1
    assert (await balance(billing_engine, account_id)).balance_nanos == 5000 * NANOS_PER_CENT


async def test_twins_racing_from_the_start_credit_once(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("9")
    deliveries = [
        delivery(ASYNC_PAYMENT_SUCCEEDED, session, payment_status="paid"),
        delivery(COMPLETED, session, payment_status="paid"),
    ] * 5

    outcomes = await asyncio.gather(*(webhooks.handle(*d) for d in deliveries))

    assert outcomes.count(CREDITED) == 1 and outcomes.count(ALREADY) == 9
    assert (await balance(billing_engine, account_id)).balance_nanos == 900 * NANOS_PER_CENT


async def test_an_unpaid_session_waits_for_its_async_payment(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    account_id, session = await kyma_session("30")

    assert await webhooks.handle(*delivery(COMPLETED, session, payment_status="unpaid")) == IGNORED
    assert await entries_for(billing_engine, session["id"]) == []
    assert (await balance(billing_engine, account_id)).balance_nanos == 0

    assert (
        await webhooks.handle(*delivery(ASYNC_PAYMENT_SUCCEEDED, session, payment_status="paid"))
        == CREDITED
    )
    view = await balance(billing_engine, account_id)
    assert view.balance_nanos == view.total_purchased_nanos == 3000 * NANOS_PER_CENT


def _one_byte_changed(body: bytes) -> bytes:
    at = body.index(b'"amount_total": 2500') + len(b'"amount_total": ')
    return body[:at] + b"9" + body[at + 1 :]  # 2500 → 9500


def _not_utf8(body: bytes) -> bytes:
    return body[:-1] + b"\xff"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda body, header: (body, ""), id="missing header"),
        pytest.param(lambda body, header: (body, "t=1,v1=abc"), id="garbage signature"),
        pytest.param(lambda body, header: (body, "nonsense"), id="unparsable header"),
        pytest.param(
            lambda body, header: (body, sign(body, "whsec_someone_else")), id="wrong secret"
        ),
        pytest.param(
            lambda body, header: (_one_byte_changed(body), header), id="body changed by one byte"
        ),
        pytest.param(lambda body, header: (_not_utf8(body), header), id="body not utf-8"),
        pytest.param(
            lambda body, header: (
                body,
                sign(body, WEBHOOK_SECRET, timestamp=int(time.time()) - 301),
            ),
            id="timestamp 301 s old",
        ),
        pytest.param(
            lambda body, header: (
                body,
                # 302: int() drops up to a second, and the check reads the clock later.
                sign(body, WEBHOOK_SECRET, timestamp=int(time.time()) + 302),
            ),
            id="timestamp over 300 s ahead",
        ),
        pytest.param(
            lambda body, header: (
                body,
                sign(body, WEBHOOK_SECRET, timestamp=int(time.time()) + 86_400),
            ),
            id="timestamp a day ahead",
        ),
        pytest.param(
            lambda body, header: (body, header.replace("v1=", "v0=")), id="other signature scheme"
        ),
    ],
)
async def test_bad_or_stale_signatures_change_nothing(
    forge: Callable[[bytes, str], tuple[bytes, str]],
    webhooks: StripeWebhooks,
    billing_engine: AsyncEngine,
    kyma_session: NewSession,
) -> None:
    account_id, session = await kyma_session("25")
    body, header = delivery(COMPLETED, session, payment_status="paid")
    before = await count_entries(billing_engine)

    with pytest.raises(InvalidRequest) as caught:
        await webhooks.handle(*forge(body, header))

    assert WEBHOOK_SECRET not in caught.value.message
    assert await count_entries(billing_engine) == before
    assert (await balance(billing_engine, account_id)).balance_nanos == 0
    # The genuine delivery still goes through afterwards.
    assert await webhooks.handle(body, header) == CREDITED


@pytest.mark.parametrize("skew", [-240, 240])
async def test_a_signature_within_the_tolerance_is_accepted(
    skew: int, webhooks: StripeWebhooks, kyma_session: NewSession
) -> None:
    """Four minutes old, or four minutes ahead (the clocks of Stripe and Kyma disagree)."""
    _, session = await kyma_session("6")
    event = webhook_event(COMPLETED, session, payment_status="paid")
    body, header = signed_delivery(event, WEBHOOK_SECRET, timestamp=int(time.time()) + skew)
    assert await webhooks.handle(body, header) == CREDITED


@pytest.mark.parametrize(
    "event_type",
    [
        "checkout.session.expired",
        "checkout.session.async_payment_failed",
        "payment_intent.succeeded",
        "charge.refunded",
    ],
)
async def test_other_events_are_ignored(
    event_type: str, webhooks: StripeWebhooks, billing_engine: AsyncEngine, kyma_session: NewSession
) -> None:
    _, session = await kyma_session("25")
    assert await webhooks.handle(*delivery(event_type, session, payment_status="paid")) == IGNORED
    assert await entries_for(billing_engine, session["id"]) == []
    assert await ignored_rows(billing_engine, session["id"]) == []  # nothing to record


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        pytest.param(
            {"client_reference_id": "acct_000000000000000000000000", "metadata": {}},
            "another account",
            id="another account",
        ),
        pytest.param({"client_reference_id": None}, "another account", id="no reference"),
        pytest.param(
            {"client_reference_id": None, "metadata": {}}, "another account", id="no account"
        ),
        pytest.param(
            {"client_reference_id": SYSTEM_PURCHASES}, "another account", id="system account"
        ),
        pytest.param(
            {"metadata": {"account_id": "acct_000000000000000000000000"}},
            "metadata names another account",
            id="metadata names another account",
        ),
        pytest.param({"amount_total": None}, "not the 2500 cents", id="no amount"),
        pytest.param({"amount_total": 0}, "not the 2500 cents", id="zero amount"),
        pytest.param({"amount_total": 2501}, "not the 2500 cents", id="a cent more"),
        pytest.param({"currency": "eur"}, "another currency", id="not usd"),
        pytest.param({"currency": None}, "another currency", id="no currency"),
        pytest.param({"mode": "subscription"}, "not a one-off payment", id="not a payment"),
        pytest.param({"id": None}, "missing or malformed", id="no session id"),
        pytest.param({"id": "cs_" + "x" * 300}, "missing or malformed", id="absurd session id"),
    ],
)
async def test_a_session_unlike_the_one_kyma_created_is_recorded_and_ignored(
    changes: dict[str, Any],
    why: str,
    webhooks: StripeWebhooks,
    billing_engine: AsyncEngine,
    kyma_session: NewSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account_id, session = await kyma_session("25")
    before = await count_entries(billing_engine)
    event = webhook_event(COMPLETED, session, payment_status="paid", **changes)
    body, header = signed_delivery(event, WEBHOOK_SECRET)

    assert await webhooks.handle(body, header) == IGNORED
    # Replayed: still ignored, and recorded once.
    assert await webhooks.handle(body, header) == IGNORED

    assert why in caplog.text and "not credited" in caplog.text
    assert WEBHOOK_SECRET not in caplog.text and header.partition("v1=")[2] not in caplog.text
    assert await count_entries(billing_engine) == before
    assert (await balance(billing_engine, account_id)).balance_nanos == 0
    [row] = await ignored_event(billing_engine, event["id"])
    assert why in row.reason and row.event_type == COMPLETED


async def test_a_session_kyma_never_created_credits_nothing(
    webhooks: StripeWebhooks, billing_engine: AsyncEngine, new_account: NewAccount
) -> None:
    """The issue's forged credit: a paid session for $999,999.99 that Kyma never created, naming a
    real account by client_reference_id (as a Payment Link lets the buyer do), by metadata
    alone, or both."""
    account_id, _ = await new_account()
    naming = [
        {"client_reference_id": account_id, "metadata": {}},
        {"client_reference_id": None, "metadata": {"account_id": account_id}},
        {"client_reference_id": account_id, "metadata": {"account_id": account_id}},
    ]
    for changes in naming:
        session = checkout_session(account_id=None, amount_total=99_999_999, **changes)
        for event_type in (COMPLETED, ASYNC_PAYMENT_SUCCEEDED):
            outcome = await webhooks.handle(*delivery(event_type, session, payment_status="paid"))
            assert outcome == IGNORED
        rows = await ignored_rows(billing_engine, session["id"])
        assert len(rows) == 2 and all("did not create" in row.reason for row in rows)
        assert {row.account_id for row in rows} == {account_id}
        assert {row.amount_total for row in rows} == {99_999_999}
    assert (await balance(billing_engine, account_id)).balance_nanos == 0


@pytest.mark.parametrize(
    "amount",
    [10**15, 2**63, 2**64, 2**70, -1, -(2**63), 25.0, 2500.5, "2500", True, [2500], {"v": 1}],
)
async def test_an_impossible_amount_is_refused_and_changes_nothing(
    amount: object,
    webhooks: StripeWebhooks,
    billing_engine: AsyncEngine,
    kyma_session: NewSession,
) -> None:
    account_id, session = await kyma_session("25")
    entries, ignored = await count_entries(billing_engine), await count_ignored(billing_engine)

    for paid in ("paid", "unpaid"):
        with pytest.raises(InvalidRequest) as caught:
            await webhooks.handle(
                *delivery(COMPLETED, session, payment_status=paid, amount_total=amount)
            )
        assert caught.value.param == "amount_total"

    assert await count_entries(billing_engine) == entries
    assert await count_ignored(billing_engine) == ignored
    assert (await balance(billing_engine, account_id)).balance_nanos == 0
    # Stripe's own delivery still credits afterwards.
    assert await webhooks.handle(*delivery(COMPLETED, session, payment_status="paid")) == CREDITED


async def test_a_deeply_nested_signed_body_is_a_400(webhooks: StripeWebhooks) -> None:
    body = b'{"type": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest):
        await webhooks.handle(body, sign(body, WEBHOOK_SECRET))


async def test_a_signed_body_that_is_not_an_event_is_refused(webhooks: StripeWebhooks) -> None:
    for body in (b"[1, 2]", b"not json"):
        with pytest.raises(InvalidRequest):
            await webhooks.handle(body, sign(body, WEBHOOK_SECRET))


async def test_without_a_signing_secret_webhooks_are_unavailable(
    billing_engine: AsyncEngine,
) -> None:
    unconfigured = StripeWebhooks(billing_engine, SystemClock(), webhook_secret=None)
    body, header = delivery(COMPLETED, checkout_session(account_id="acct_x", amount_total=100))
    with pytest.raises(BillingNotConfigured):
        await unconfigured.handle(body, header)


async def test_checkout_then_paid_webhook_credits_the_amount(
    checkout: CheckoutSessions,
    fake_stripe: RunningFakeStripe,
    webhooks: StripeWebhooks,
    billing_engine: AsyncEngine,
    new_account: NewAccount,
) -> None:
    account_id, _ = await new_account()
    session_id, _ = await checkout.create(
        account_id=account_id, email="b@example.com", amount_usd="12.34"
    )
    session = fake_stripe.api.sessions[session_id]

    assert await webhooks.handle(*delivery(COMPLETED, session)) == IGNORED  # still "unpaid"
    assert (
        await webhooks.handle(
            *delivery(COMPLETED, session, payment_status="paid", status="complete")
        )
        == CREDITED
    )

    view = await balance(billing_engine, account_id)
    assert view.balance_nanos == view.total_purchased_nanos == 1234 * NANOS_PER_CENT
    assert await ignored_rows(billing_engine, session_id) == []


async def test_grpc_webhook_needs_no_key_but_a_signature(
    billing_stub: billing_service_pb2_grpc.BillingServiceStub,
    billing_engine: AsyncEngine,
    kyma_session: NewSession,
) -> None:
    account_id, session = await kyma_session("8")
    body, header = delivery(COMPLETED, session, payment_status="paid")

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await billing_stub.HandleStripeWebhook(
            pb.HandleStripeWebhookRequest(payload=body + b" ", signature=header)
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await balance(billing_engine, account_id)).balance_nanos == 0

    reply = await billing_stub.HandleStripeWebhook(
        pb.HandleStripeWebhookRequest(payload=body, signature=header)
    )
    assert reply.outcome == pb.WEBHOOK_OUTCOME_CREDITED
    again = await billing_stub.HandleStripeWebhook(
        pb.HandleStripeWebhookRequest(payload=body, signature=header)
    )
    assert again.outcome == pb.WEBHOOK_OUTCOME_ALREADY_CREDITED
