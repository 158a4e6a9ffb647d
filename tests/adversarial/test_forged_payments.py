"""Forged and oversized Stripe webhooks against a real core and bridge (PostgreSQL, the fake
Stripe API), over HTTP and gRPC: the findings of issue 12, part 1.

- A signed, paid session Kyma never created credits nothing, however it names the account
  (client_reference_id as a Payment Link lets the buyer set it, metadata.account_id alone, or
  both) and whatever its amount ($999,999.99 in the issue); it is recorded for the operator.
- A session Kyma created credits what Kyma created it for, exactly once, however its events
  are replayed, raced or altered.
- An amount_total no Stripe session can have (10^15, 2^63, negative, not an integer) is a 400
  (INVALID_ARGUMENT), never a 500, and writes nothing.
- A signature dated a day ahead is refused like a stale one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from core_service.db.models import IgnoredPayment, LedgerEntry
from kyma.billing.v1 import billing_service_pb2 as billing_pb
from kyma.billing.v1 import billing_service_pb2_grpc as billing_grpc
from tests.conftest import running_kyma  # type: ignore[import-not-found]
from tests.fakes.stripe_api import (  # type: ignore[import-not-found]
    API_KEY,
    WEBHOOK_SECRET,
    checkout_session,
    running_fake_stripe,
    signed_delivery,
    webhook_event,
)
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WEBHOOK = "/v1/billing/stripe/webhook"
BONUS = 500_000_000  # the welcome bonus every account starts with
COMPLETED = "checkout.session.completed"
SUCCEEDED = "checkout.session.async_payment_succeeded"


@pytest_asyncio.fixture(scope="module")
async def paying(upstream, pg_url, tmp_path_factory):
    async with running_fake_stripe() as stripe_api:
        async with running_kyma(
            tmp_path_factory.mktemp("forged"),
            pg_url,
            upstream,
            "postgres",
            stripe_secret_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_api.url,
        ) as kyma:
            kyma.stripe = stripe_api  # type: ignore[attr-defined]
            yield kyma
        await kyma.verify_ledger()


async def over_http(kyma, event: dict, *, timestamp: int | None = None) -> tuple[int, dict]:
    payload, signature = signed_delivery(event, WEBHOOK_SECRET, timestamp=timestamp)
    async with kyma.http() as http:
        reply = await http.post(
            WEBHOOK,
            content=payload,
            headers={"stripe-signature": signature, "content-type": "application/json"},
        )
    return reply.status_code, reply.json()


async def over_grpc(kyma, event: dict, *, timestamp: int | None = None) -> str:
    """The outcome's name, or the status code's name when the call failed."""
    payload, signature = signed_delivery(event, WEBHOOK_SECRET, timestamp=timestamp)
    stub = billing_grpc.BillingServiceStub(kyma.channel)
    try:
        reply = await stub.HandleStripeWebhook(
            billing_pb.HandleStripeWebhookRequest(payload=payload, signature=signature)
        )
    except grpc.aio.AioRpcError as error:
        assert "Traceback" not in (error.details() or "")
        return error.code().name
    return billing_pb.WebhookOutcome.Name(reply.outcome)


async def kyma_checkout(kyma, key: str, amount: str) -> dict:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/billing/checkout",
            json={"amount_usd": amount},
            headers={"authorization": f"Bearer {key}"},
        )
    assert reply.status_code == 200, reply.text
    return kyma.stripe.api.sessions[reply.json()["id"]]


async def counts(kyma) -> tuple[int, int]:
    """(ledger entries, ignored payments) in the whole database."""
    async with kyma.core.storage.reads.connect() as conn:
        entries = await conn.scalar(select(func.count()).select_from(LedgerEntry))
        ignored = await conn.scalar(select(func.count()).select_from(IgnoredPayment))
    return int(entries or 0), int(ignored or 0)


async def test_a_session_kyma_never_created_credits_nothing(paying, caplog) -> None:
    account_id, _ = await paying.create_account()
    forged = [
        # Another product, or a Payment Link whose buyer typed a Kyma account id.
        checkout_session(account_id=account_id, amount_total=99_999_999, metadata={}),
        # The account named in metadata alone.
        checkout_session(
            account_id=None, amount_total=99_999_999, metadata={"account_id": account_id}
        ),
        checkout_session(account_id=account_id, amount_total=2500),
    ]
    with caplog.at_level(logging.WARNING, logger="core_service.billing.webhooks"):
        for session in forged:
            paid = webhook_event(COMPLETED, session, payment_status="paid", status="complete")
            status, body = await over_http(paying, paid)
            assert (status, body["outcome"]) == (200, "ignored")
            assert await over_grpc(paying, webhook_event(SUCCEEDED, session)) == (
                "WEBHOOK_OUTCOME_IGNORED"
            )

    assert (await paying.balance(account_id)).balance_nanos == BONUS
    # The operator sees every one of them, and why.
    code, out, _ = await kyma_cli(paying, "admin", "payments", "ignored", "--json")
    assert code == 0
    listed = {p["session_id"]: p for p in json.loads(out)["payments"]}
    for session in forged:
        assert "Kyma did not create" in listed[session["id"]]["reason"]
        assert listed[session["id"]]["account_id"] == account_id
    assert "not credited" in caplog.text and WEBHOOK_SECRET not in caplog.text


async def test_a_kyma_session_credits_what_kyma_created_exactly_once(paying) -> None:
    account_id, key = await paying.create_account()
    session = await kyma_checkout(paying, key, "25")
    completed = webhook_event(COMPLETED, session, payment_status="paid", status="complete")
    succeeded = webhook_event(SUCCEEDED, session, payment_status="paid", status="complete")
    # The same session's events altered: a bigger amount, another account, another currency.
    other_id, _ = await paying.create_account()
    altered = [
        webhook_event(COMPLETED, session, payment_status="paid", amount_total=99_999_999),
        webhook_event(COMPLETED, session, payment_status="paid", client_reference_id=other_id),
        webhook_event(
            COMPLETED,
            session,
            payment_status="paid",
            client_reference_id=None,
            metadata={"account_id": other_id},
        ),
        webhook_event(COMPLETED, session, payment_status="paid", currency="eur"),
    ]
    for event in altered:
        assert (await over_http(paying, event))[1]["outcome"] == "ignored"

    http_outcomes, grpc_outcomes = await asyncio.gather(
        asyncio.gather(*(over_http(paying, e) for e in [completed, succeeded] * 5)),
        asyncio.gather(*(over_grpc(paying, e) for e in [succeeded, completed] * 5)),
    )
    outcomes = [body["outcome"] for _, body in http_outcomes] + [
        name.removeprefix("WEBHOOK_OUTCOME_").lower() for name in grpc_outcomes
    ]
    assert sorted(outcomes) == ["already_credited"] * 19 + ["credited"]
    for event in altered:  # and after the credit, still nothing more
        assert (await over_http(paying, event))[1]["outcome"] == "ignored"

    view = await paying.balance(account_id)
    assert view.total_purchased_nanos == 25 * 10**9
    assert view.balance_nanos == BONUS + 25 * 10**9
    assert (await paying.balance(other_id)).balance_nanos == BONUS


@pytest.mark.parametrize("amount", [10**15, 2**63, -2500, 2500.5, "2500"])
async def test_an_impossible_amount_is_a_400_and_writes_nothing(paying, amount) -> None:
    account_id, key = await paying.create_account()
    session = await kyma_checkout(paying, key, "25")
    before = await counts(paying)
    event = webhook_event(COMPLETED, session, payment_status="paid", amount_total=amount)

    status, body = await over_http(paying, event)
    assert status == 400 and body["error"]["param"] == "amount_total"
    assert await over_grpc(paying, event) == "INVALID_ARGUMENT"

    assert await counts(paying) == before
    assert (await paying.balance(account_id)).balance_nanos == BONUS


async def test_a_signature_dated_a_day_ahead_is_refused(paying) -> None:
    account_id, key = await paying.create_account()
    session = await kyma_checkout(paying, key, "10")
    event = webhook_event(COMPLETED, session, payment_status="paid", status="complete")
    ahead = int(time.time()) + 86_400

    status, body = await over_http(paying, event, timestamp=ahead)
    assert status == 400 and "Stripe-Signature" in (body["error"]["param"] or "")
    assert await over_grpc(paying, event, timestamp=ahead) == "INVALID_ARGUMENT"
    assert (await paying.balance(account_id)).balance_nanos == BONUS
    # Signed now, the same event credits.
    assert (await over_http(paying, event))[1]["outcome"] == "credited"
