"""Buying credits over HTTP: Checkout through the bridge, then Stripe's webhook crediting once."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from tests.fakes.stripe_api import (
    API_KEY,
    WEBHOOK_SECRET,
    running_fake_stripe,
    signed_delivery,
    webhook_event,
)

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
]

WEBHOOK = "/v1/billing/stripe/webhook"


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def paying_kyma(request, upstream, tmp_path_factory):
    from tests.conftest import running_kyma  # type: ignore[import-not-found]

    async with running_fake_stripe() as stripe_api:
        url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
        async with running_kyma(
            tmp_path_factory.mktemp("paying"),
            url,
            upstream,
            request.param,
            stripe_secret_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_api.url,
        ) as kyma:
            kyma.stripe = stripe_api  # type: ignore[attr-defined]
            yield kyma
        await kyma.verify_ledger()


async def checkout(kyma, key: str, amount) -> dict:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/billing/checkout",
            json={"amount_usd": amount},
            headers={"authorization": f"Bearer {key}"},
        )
    return {"status": reply.status_code, **reply.json()}


async def deliver(
    kyma,
    event: dict,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    tamper: bool = False,
):
    payload, signature = signed_delivery(event, secret, timestamp=timestamp)
    if tamper:
        payload = payload.replace(b'"amount_total": 2500', b'"amount_total": 9500')
    async with kyma.http() as http:
        return await http.post(
            WEBHOOK,
            content=payload,
            headers={"stripe-signature": signature, "content-type": "application/json"},
        )


async def test_checkout_then_paid_webhook_credits_once(paying_kyma) -> None:
    kyma = paying_kyma
    account_id, key = await kyma.create_account()
    started = await checkout(kyma, key, "25")
    assert started["status"] == 200 and started["url"].startswith("https://")
    session = kyma.stripe.api.sessions[started["id"]]
    assert session["client_reference_id"] == account_id and session["amount_total"] == 2500

    completed = webhook_event(
        "checkout.session.completed", session, payment_status="paid", status="complete"
    )
    replies = await asyncio.gather(*(deliver(kyma, completed) for _ in range(10)))
    assert all(r.status_code == 200 for r in replies)
    outcomes = sorted(r.json()["outcome"] for r in replies)
    assert outcomes == ["already_credited"] * 9 + ["credited"]
    balance = await kyma.balance(account_id)
    assert balance.balance_nanos == 500_000_000 + 25 * 10**9
    assert balance.total_purchased_nanos == 25 * 10**9
    # The account's own view agrees with itself at once, whether or not this node's cached
    # key lookup has learned of the purchase yet (the console shows both side by side).
    async with kyma.http() as http:
        at_once = (await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})).json()
    assert at_once["total_purchased_usd"] == "25.000000000" and at_once["tier"] == 1
    assert at_once["limits"]["requests_per_minute"] == 60
    # $25 purchased crosses tier 1's $10: its limits apply once the key lookup is refreshed.
    await kyma.account_changes_seen()
    async with kyma.http() as http:
        body = (await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})).json()
        chat = await http.post(
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            headers={"authorization": f"Bearer {key}"},
        )
    assert body["total_purchased_usd"] == "25.000000000" and body["tier"] == 1
    assert chat.headers["x-ratelimit-limit-requests"] == "50"
    assert chat.headers["x-ratelimit-limit-tokens"] == "1000000"


async def test_async_payment_credits_only_when_paid_and_once(paying_kyma) -> None:
    kyma = paying_kyma
    account_id, key = await kyma.create_account()
    session = kyma.stripe.api.sessions[(await checkout(kyma, key, 25))["id"]]
    unpaid = webhook_event(
        "checkout.session.completed", session, payment_status="unpaid", status="complete"
    )
    assert (await deliver(kyma, unpaid)).json()["outcome"] == "ignored"
    assert (await kyma.balance(account_id)).total_purchased_nanos == 0
    succeeded = webhook_event(
        "checkout.session.async_payment_succeeded",
        session,
        payment_status="paid",
        status="complete",
    )
    paid = webhook_event(
        "checkout.session.completed", session, payment_status="paid", status="complete"
    )
    # Out of order: the success first, then a late completed-and-paid twin.
    assert (await deliver(kyma, succeeded)).json()["outcome"] == "credited"
    assert (await deliver(kyma, paid)).json()["outcome"] == "already_credited"
    assert (await kyma.balance(account_id)).total_purchased_nanos == 25 * 10**9


@pytest.mark.parametrize(
    "change",
    ["bad secret", "one byte changed", "301 s old", "missing header"],
)
async def test_bad_webhooks_get_400_and_change_nothing(paying_kyma, change: str) -> None:
    kyma = paying_kyma
    account_id, key = await kyma.create_account()
    session = kyma.stripe.api.sessions[(await checkout(kyma, key, 25))["id"]]
    event = webhook_event(
        "checkout.session.completed", session, payment_status="paid", status="complete"
    )
    if change == "missing header":
        payload, _ = signed_delivery(event, WEBHOOK_SECRET)
        async with kyma.http() as http:
            reply = await http.post(WEBHOOK, content=payload)
    elif change == "bad secret":
        reply = await deliver(kyma, event, secret="whsec_wrong")
    elif change == "one byte changed":
        reply = await deliver(kyma, event, tamper=True)
    else:
        reply = await deliver(kyma, event, timestamp=int(time.time()) - 301)
    assert reply.status_code == 400 and reply.json()["error"]["message"]
    assert (await kyma.balance(account_id)).balance_nanos == 500_000_000


@pytest.mark.parametrize(
    "amount", ["-5", "0", "NaN", "1e3", "10.001", "abc", "1", "99999999", True, None]
)
async def test_checkout_refuses_bad_amounts(paying_kyma, amount) -> None:
    _, key = await paying_kyma.create_account()
    reply = await checkout(paying_kyma, key, amount)
    assert reply["status"] == 400 and reply["error"]["param"] == "amount_usd"


async def test_checkout_needs_a_key(paying_kyma) -> None:
    async with paying_kyma.http() as http:
        reply = await http.post("/v1/billing/checkout", json={"amount_usd": "25"})
    assert reply.status_code == 401


async def test_banned_accounts_buy_nothing(paying_kyma) -> None:
    from kyma.admin.v1 import admin_service_pb2

    account_id, key = await paying_kyma.create_account()
    await paying_kyma.admin(
        "BanAccount",
        admin_service_pb2.BanAccountRequest(
            account_id=account_id,
            justification=admin_service_pb2.Justification(actor="t", reason="fraud"),
        ),
    )
    await paying_kyma.account_changes_seen()
    reply = await checkout(paying_kyma, key, "25")
    assert reply["status"] == 403 and reply["error"]["code"] == "account_banned"
