"""One busy account and many quiet ones, under the writer's group commit: 64 requests at once
of one account are decided together against its balance (exactly as many as it covers get
through, however they are batched), 64 requests of 64 accounts all get through, no balance
goes below zero, and what was charged is what was used."""

from __future__ import annotations

import asyncio

import httpx

from kyma.admin.v1 import admin_service_pb2
from tests.integration.test_credits import IN, OUT, hi, set_balance

# Each request's hold: the prompt estimate with its margin, and MAX_TOKENS of completion. A
# request that ends gives back the margin it did not use (66k), but ten of them together with
# the half hold left over still cover no 11th: how many get through does not depend on how many
# ended before the last was decided (on a busy machine some may, despite the upstream's 3 s).
MAX_TOKENS = 1000
HOLD = (8 + 2 + 64) * IN + MAX_TOKENS * OUT


async def _burst(kyma, keys: list[str]) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    limits = httpx.Limits(max_connections=len(keys))
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.post(
                    "/v1/chat/completions",
                    json=hi(MAX_TOKENS),
                    headers={"authorization": f"Bearer {key}"},
                )
                for key in keys
            )
        )


def _used(replies: list[httpx.Response]) -> int:
    return sum(
        r.json()["usage"]["prompt_tokens"] * IN + r.json()["usage"]["completion_tokens"] * OUT
        for r in replies
        if r.status_code == 200
    )


async def test_64_requests_of_one_account_are_decided_against_its_balance(kyma) -> None:
    account_id, key = await kyma.create_account()
    await set_balance(kyma, account_id, 10 * HOLD + HOLD // 2)
    await kyma.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=account_id, tier=4))
    await kyma.account_changes_seen()
    # Every hold is decided long before any request ends (and frees its unused credit).
    await kyma.upstream.control(latency_ms=3000)
    replies = await _burst(kyma, [key] * 64)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 10 + [402] * 54, statuses
    balance = await kyma.balance(account_id)
    assert balance.balance_nanos >= 0 and balance.held_nanos == 0
    assert 10 * HOLD + HOLD // 2 - balance.balance_nanos == _used(replies)


async def test_64_requests_of_64_accounts_all_get_through(kyma) -> None:
    accounts = [await kyma.create_account() for _ in range(64)]
    for account_id, _ in accounts:
        await set_balance(kyma, account_id, HOLD)  # one request's worth each
    await kyma.upstream.control(latency_ms=300)
    replies = await _burst(kyma, [key for _, key in accounts])
    assert [r.status_code for r in replies] == [200] * 64
    for (account_id, _), reply in zip(accounts, replies, strict=True):
        balance = await kyma.balance(account_id)
        assert balance.held_nanos == 0 and balance.balance_nanos >= 0
        assert HOLD - balance.balance_nanos == _used([reply])
