"""Credits through the whole gateway: holds on every request, exact charges, 402s, ledger."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from kyma.admin.v1 import admin_service_pb2

pytestmark = pytest.mark.asyncio

WELCOME = 500_000_000  # $0.50
# test-model: $1 per million input tokens, $2 per million output tokens.
IN, OUT = 1_000, 2_000


def hi(max_tokens: int) -> dict:
    return {
        "model": "test-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }


async def set_balance(kyma, account_id: str, nanos: int) -> None:
    delta = nanos - (await kyma.balance(account_id)).balance_nanos
    if delta:
        await kyma.admin(
            "AdjustCredits",
            admin_service_pb2.AdjustCreditsRequest(
                account_id=account_id,
                amount_usd=f"{delta / 1e9:.9f}",
                reason="test setup",
                actor="tests",
            ),
        )


async def test_new_account_has_the_welcome_bonus(kyma, account) -> None:
    async with kyma.http() as http:
        reply = await http.get("/v1/account", headers={"authorization": f"Bearer {account[1]}"})
        ledger = await http.get(
            "/v1/account/ledger", headers={"authorization": f"Bearer {account[1]}"}
        )
    assert reply.status_code == 200
    body = reply.json()
    assert body["balance_usd"] == "0.500000000" and body["available_usd"] == "0.500000000"
    assert body["total_purchased_usd"] == "0.000000000" and body["status"] == "active"
    assert body["limits"] == {
        "tier": 0,
        "requests_per_minute": 30,
        "requests_per_minute_per_model": 25,
        "tokens_per_minute": 200_000,
        "pinned": False,
    }
    entries = ledger.json()["data"]
    assert [(e["kind"], e["amount_usd"]) for e in entries] == [("welcome_bonus", "0.500000000")]


async def test_request_is_charged_exactly_its_usage(kyma, client, account) -> None:
    reply = await client.chat.completions.create(**hi(20))
    cost = reply.usage.prompt_tokens * IN + reply.usage.completion_tokens * OUT
    balance = await kyma.balance(account[0])
    assert balance.balance_nanos == WELCOME - cost and balance.held_nanos == 0
    async with kyma.http() as http:
        usage = (
            await http.get("/v1/account/usage", headers={"authorization": f"Bearer {account[1]}"})
        ).json()
        ledger = (
            await http.get(
                "/v1/account/ledger?limit=1", headers={"authorization": f"Bearer {account[1]}"}
            )
        ).json()
    [row] = usage["data"]
    assert row["model"] == "test-model" and row["requests"] == 1
    assert row["completion_tokens"] == 20 and row["estimated_requests"] == 0
    assert row["cost_usd"] == f"{cost / 1e9:.9f}"
    assert (
        ledger["data"][0]["kind"] == "usage"
        and ledger["data"][0]["amount_usd"] == f"-{cost / 1e9:.9f}"
    )
    assert ledger["has_more"] is True


async def test_ledger_pages(kyma, client, account) -> None:
    for _ in range(3):
        await client.embeddings.create(model="test-model", input="hello world")
    await kyma.settled()
    seen, token = [], None
    async with kyma.http() as http:
        while True:
            query = "/v1/account/ledger?limit=2" + (f"&page_token={token}" if token else "")
            page = (await http.get(query, headers={"authorization": f"Bearer {account[1]}"})).json()
            seen += [e["id"] for e in page["data"]]
            token = page["next_page_token"]
            if not page["has_more"]:
                break
        bad = await http.get(
            "/v1/account/ledger?page_token=zzz", headers={"authorization": f"Bearer {account[1]}"}
        )
    assert len(seen) == 4 and seen == sorted(seen, reverse=True)
    assert bad.status_code == 400


async def test_insufficient_credits_is_402_and_costs_nothing(kyma, account) -> None:
    await set_balance(kyma, account[0], 100_000)  # $0.0001
    async with kyma.client(account[1]) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(**hi(1000))
        assert caught.value.status_code == 402
        assert caught.value.code == "insufficient_quota"
        assert "max_tokens=" in caught.value.message
        with pytest.raises(openai.APIStatusError) as streamed:
            await sdk.chat.completions.create(**hi(1000), stream=True)
        assert streamed.value.status_code == 402
        # What the message says the balance affords is admitted.
        affordable = int(caught.value.message.split("max_tokens=")[1].split(".")[0])
        await sdk.chat.completions.create(**hi(affordable))
    balance = await kyma.balance(account[0])
    assert 0 <= balance.balance_nanos < 100_000
    assert (await kyma.upstream.stats())["requests_total"] == 1


async def test_concurrent_requests_never_overdraw(kyma, account) -> None:
    """200 requests at once on a balance that covers 10 holds: at most 10 get through, the
    balance never goes negative, and what was charged is what was used."""
    hold = (8 + 2 + 64) * IN + 1000 * OUT  # prompt estimate with margin + max_tokens
    await set_balance(kyma, account[0], 10 * hold)
    # Tier 4 admits 200 requests a minute for one model: this test is about credit, not limits.
    await kyma.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=account[0], tier=4))
    await kyma.account_changes_seen()
    await kyma.upstream.control(latency_ms=1500)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=60, limits=limits) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    "/v1/chat/completions",
                    json=hi(1000),
                    headers={"authorization": f"Bearer {account[1]}"},
                )
                for _ in range(200)
            )
        )
    statuses = [r.status_code for r in replies]
    admitted = [r for r in replies if r.status_code == 200]
    assert set(statuses) <= {200, 402}
    assert 1 <= len(admitted) <= 10
    used = sum(
        r.json()["usage"]["prompt_tokens"] * IN + r.json()["usage"]["completion_tokens"] * OUT
        for r in admitted
    )
    balance = await kyma.balance(account[0])
    assert balance.balance_nanos >= 0 and balance.held_nanos == 0
    assert 10 * hold - balance.balance_nanos == used


async def test_stream_cut_by_client_is_charged_for_what_was_delivered(kyma, account) -> None:
    await kyma.upstream.control(tokens_per_second=40)
    delivered = 0
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=30) as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={**hi(500), "stream": True},
            headers={"authorization": f"Bearer {account[1]}"},
        ) as response:
            async for line in response.aiter_lines():
                if (
                    line.startswith("data: ")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    delivered += 1
                    if delivered == 6:
                        break
    await kyma.settled()
    async with kyma.http() as http:
        [row] = (
            await http.get("/v1/account/usage", headers={"authorization": f"Bearer {account[1]}"})
        ).json()["data"]
    assert row["estimated_requests"] == 1
    assert 6 <= row["completion_tokens"] <= 9  # what reached the bridge before the cancel
    assert (await kyma.upstream.stats())["cancelled"] >= 1


async def test_upstream_failure_before_first_byte_costs_nothing(kyma, account) -> None:
    await kyma.upstream.control(error_rate=1.0, error_status=503)
    async with kyma.client(account[1]) as sdk:
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(**hi(10))
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(**hi(10), stream=True)
    balance = await kyma.balance(account[0])
    assert balance.balance_nanos == WELCOME and balance.held_nanos == 0


async def test_mid_stream_failure_is_charged_for_delivered_tokens(kyma, account) -> None:
    await kyma.upstream.control(drop_stream_after=5)
    async with kyma.client(account[1]) as sdk:
        stream = await sdk.chat.completions.create(**hi(100), stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    await kyma.settled()
    async with kyma.http() as http:
        [row] = (
            await http.get("/v1/account/usage", headers={"authorization": f"Bearer {account[1]}"})
        ).json()["data"]
    assert row["completion_tokens"] == 5 and row["estimated_requests"] == 1
    balance = await kyma.balance(account[0])
    assert WELCOME - balance.balance_nanos == row["prompt_tokens"] * IN + 5 * OUT
