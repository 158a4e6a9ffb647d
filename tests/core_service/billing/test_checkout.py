"""Starting a purchase: amount validation, and the Checkout Session as the fake Stripe receives it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from decimal import Decimal

import grpc
import pytest
import stripe
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.store import AccountStore
from core_service.billing.checkout import CheckoutSessions, parse_amount_usd
from core_service.clock import SystemClock
from core_service.db.engine import create_engine
from core_service.db.models import CheckoutSession
from core_service.errors import BillingNotConfigured, InvalidRequest, PaymentProviderError
from kyma.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from tests.fakes.stripe_api import RunningFakeStripe

# The stripe library posts its form body as `data=`; httpx 0.28 warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SUCCESS_URL = "http://127.0.0.1:8000/billing/success?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://127.0.0.1:8000/billing/cancelled"

NewAccount = Callable[[], Awaitable[tuple[str, str]]]  # the conftest fixture


def sessions(
    client: stripe.StripeClient | None, engine: AsyncEngine | None = None
) -> CheckoutSessions:
    """Without `engine`, one that is never connected: for checkouts that fail before a session
    is made (and so before one is recorded)."""
    return CheckoutSessions(
        client,
        engine or create_engine("sqlite+aiosqlite://"),
        SystemClock(),
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        min_usd=Decimal("5"),
        max_usd=Decimal("10000"),
    )


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        ("-10", "greater than zero"),
        ("0", "greater than zero"),
        ("0.00", "greater than zero"),
        ("NaN", "plain decimal"),
        ("nan", "plain decimal"),
        ("Infinity", "plain decimal"),
        ("-Infinity", "plain decimal"),
        ("1e3", "plain decimal"),
        ("1E3", "plain decimal"),
        ("10.001", "2 decimal places"),
        ("4.99", "at least $5.00"),
        ("10000.01", "at most $10000.00"),
        ("99999999999999999999999999999", "at most $10000.00"),
        ("ten", "plain decimal"),
        ("$25", "plain decimal"),
        ("1,000", "plain decimal"),
        ("1_000", "plain decimal"),
        ("٢٥", "plain decimal"),  # Arabic-Indic digits: Decimal() would take them
        (".5", "plain decimal"),
        ("25.", "plain decimal"),
        ("", "required"),
        ("   ", "required"),
        ("1" * 33, "too long"),
        ("9" * 10_000, "too long"),
    ],
)
async def test_bad_amounts_are_refused_before_stripe(
    amount: str, says: str, stripe_client: stripe.StripeClient, fake_stripe: RunningFakeStripe
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await sessions(stripe_client).create(
            account_id="acct_x", email="a@example.com", amount_usd=amount
        )
    assert caught.value.param == "amount_usd"
    assert says in caught.value.message
    assert len(caught.value.message) < 200  # never echoes a huge input
    assert fake_stripe.api.requests == []


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("5", 500),
        ("25", 2500),
        ("10.5", 1050),
        ("10.50", 1050),
        ("10.500", 1050),
        (" 42 ", 4200),
        ("+7.25", 725),
        ("10000", 1_000_000),
        ("10000.00", 1_000_000),
    ],
)
def test_good_amounts_are_whole_cents(amount: str, cents: int) -> None:
    parsed = parse_amount_usd(amount, min_usd=Decimal("5"), max_usd=Decimal("10000"))
    assert parsed.scaleb(2) == cents


async def test_creates_a_payment_session_for_the_account_and_records_it(
    stripe_client: stripe.StripeClient,
    fake_stripe: RunningFakeStripe,
    billing_engine: AsyncEngine,
    new_account: NewAccount,
) -> None:
    account_id, _ = await new_account()
    session_id, url = await sessions(stripe_client, billing_engine).create(
        account_id=account_id, email="buyer@example.com", amount_usd="25.50"
    )

    assert session_id.startswith("cs_test_")
    assert url.startswith("https://checkout.stripe.com/") and session_id in url
    [request] = fake_stripe.api.requests
    assert (request.method, request.path) == ("POST", "/v1/checkout/sessions")
    assert request.headers["authorization"].startswith("Bearer sk_test_")
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert request.form == {
        "mode": "payment",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2550",
        "line_items[0][price_data][product_data][name]": "Kyma credits",
        "line_items[0][price_data][product_data][description]": "$25.50 of Kyma API credit",
        "client_reference_id": account_id,
        "customer_email": "buyer@example.com",
        "metadata[account_id]": account_id,
        "metadata[amount_usd]": "25.50",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
    }
    created = fake_stripe.api.sessions[session_id]
    assert created["amount_total"] == 2550
    assert created["payment_status"] == "unpaid"
    # What a webhook may later credit: this session, this account, this amount and currency.
    async with billing_engine.connect() as conn:
        [recorded] = (
            await conn.execute(select(CheckoutSession).where(CheckoutSession.id == session_id))
        ).all()
    assert (recorded.account_id, recorded.amount_cents, recorded.currency) == (
        account_id,
        2550,
        "usd",
    )


async def test_purchases_switched_off_without_a_stripe_key() -> None:
    with pytest.raises(BillingNotConfigured, match="Purchases are not enabled on this Kyma"):
        await sessions(None).create(account_id="acct_x", email="a@example.com", amount_usd="25")


async def test_a_refused_stripe_key_is_unavailable_and_never_quoted(
    fake_stripe: RunningFakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    http = stripe.HTTPXClient(timeout=5)
    wrong = stripe.StripeClient(
        "sk_test_wrong_key_SECRETTAIL", base_addresses={"api": fake_stripe.url}, http_client=http
    )
    caplog.set_level(logging.DEBUG, logger="core_service")
    try:
        with pytest.raises(PaymentProviderError) as caught:
            await sessions(wrong).create(
                account_id="acct_x", email="a@example.com", amount_usd="25"
            )
    finally:
        await http.close_async()
    assert "payment provider" in caught.value.message
    for text in (caught.value.message, str(caught.value), caplog.text):
        assert "sk_test" not in text and "TAIL" not in text
    assert "AuthenticationError" in caplog.text


async def test_a_stripe_outage_is_unavailable(
    stripe_client: stripe.StripeClient, fake_stripe: RunningFakeStripe
) -> None:
    fake_stripe.api.fail_with = 500
    with pytest.raises(PaymentProviderError):
        await sessions(stripe_client).create(
            account_id="acct_x", email="a@example.com", amount_usd="25"
        )


async def test_an_unreachable_stripe_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = stripe.HTTPXClient(timeout=5)
    client = stripe.StripeClient(
        "sk_test_x",
        base_addresses={"api": f"http://127.0.0.1:{port}"},
        http_client=http,
        max_network_retries=0,
    )
    try:
        with pytest.raises(PaymentProviderError):
            await sessions(client).create(
                account_id="acct_x", email="a@example.com", amount_usd="25"
            )
    finally:
        await http.close_async()


def _param(error: grpc.aio.AioRpcError) -> str | None:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.metadata.get("param")
    return None


async def test_grpc_checkout_for_the_key_holder(
    billing_stub: billing_service_pb2_grpc.BillingServiceStub,
    new_account: NewAccount,
    account_store: AccountStore,
    fake_stripe: RunningFakeStripe,
) -> None:
    account_id, api_key = await new_account()
    account = await account_store.get_account(account_id)
    assert account is not None

    reply = await billing_stub.CreateCheckoutSession(
        billing_service_pb2.CreateCheckoutSessionRequest(amount_usd="20"),
        metadata=(("authorization", f"Bearer {api_key}"),),
    )

    assert reply.session_id.startswith("cs_test_") and reply.url.startswith("https://")
    [request] = fake_stripe.api.requests
    assert request.form["client_reference_id"] == account_id
    assert request.form["customer_email"] == account.email
    assert request.form["line_items[0][price_data][unit_amount]"] == "2000"


async def test_grpc_checkout_needs_a_key_and_a_good_amount(
    billing_stub: billing_service_pb2_grpc.BillingServiceStub,
    new_account: NewAccount,
    fake_stripe: RunningFakeStripe,
) -> None:
    _, api_key = await new_account()
    with pytest.raises(grpc.aio.AioRpcError) as no_key:
        await billing_stub.CreateCheckoutSession(
            billing_service_pb2.CreateCheckoutSessionRequest(amount_usd="20")
        )
    assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.aio.AioRpcError) as bad_amount:
        await billing_stub.CreateCheckoutSession(
            billing_service_pb2.CreateCheckoutSessionRequest(amount_usd="1e3"),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    assert bad_amount.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _param(bad_amount.value) == "amount_usd"
    assert fake_stripe.api.requests == []
