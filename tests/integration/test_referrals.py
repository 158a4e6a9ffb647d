"""The referral program end to end: codes and links, pending referrals, rewards exactly once
across nodes, abuse flags, revoked privileges, and the program switched off."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import running_kyma  # type: ignore[import-not-found]
from tests.integration.test_accounts import verify  # type: ignore[import-not-found]
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

FAST = {
    "referral_tokens_required": 60,
    "referral_check_interval_seconds": 0.1,
    "tiers": [
        {"tier": 0, "min_purchased_usd": "0", "rpm": 10_000, "model_rpm": 10_000, "tpm": 10**9}
    ],
}
REWARD = 500_000_000


async def signup_with(
    kyma, address: str, code: str, fingerprint: str | None = None
) -> tuple[str, str]:
    # Each person from an address of their own (the bridge trusts X-Forwarded-For from loopback).
    headers = {"x-forwarded-for": f"203.0.113.{sum(map(ord, address)) % 250 + 1}"}
    if fingerprint:
        headers["x-client-fingerprint"] = fingerprint
    async with kyma.http() as http:
        started = await http.post(
            "/v1/auth/signup", json={"email": address, "referral_code": code}, headers=headers
        )
    assert started.status_code == 200, started.text
    status, body = await verify(kyma, address, kyma.last_code(address))
    assert status == 201
    return body["id"], body["api_key"]


async def account_of(kyma, key: str) -> dict:
    async with kyma.http() as http:
        return (await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})).json()


async def use_tokens(kyma, key: str, requests: int, *, concurrency: int = 50) -> None:
    body = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    async with httpx.AsyncClient(
        base_url=kyma.http_url, timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                )
                for _ in range(requests)
            )
        )
    assert all(r.status_code == 200 for r in replies)


async def until(predicate, timeout: float = 30.0) -> None:  # liveness: checks run every 0.1 s
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def reward_entries(kyma, account_id: str) -> int:
    entries = await kyma.core.ledger.entries(account_id, limit=100)
    return sum(1 for e in entries if e.kind == "referral_reward")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_rewards_exactly_once_across_two_nodes(
    upstream, tmp_path, request, backend: str
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    async with running_kyma(tmp_path, url, upstream, backend, **FAST) as first:
        async with running_kyma(tmp_path, url, upstream, backend, **FAST) as second:
            referrer_id, referrer_key = await first.create_account()
            me = await account_of(first, referrer_key)
            assert me["referral_code"] and me["referral_link"].endswith(
                f"?ref={me['referral_code']}"
            )
            referred_id, referred_key = await signup_with(
                first, f"friend-{backend}@example.com", me["referral_code"]
            )
            async with first.http() as http:
                listed = (
                    await http.get(
                        "/v1/account/referrals", headers={"authorization": f"Bearer {referrer_key}"}
                    )
                ).json()
            [pending] = listed["data"]
            assert (
                pending["status"] == "pending" and pending["referred_email"] == "f***@example.com"
            )
            assert listed["reward_usd"] == "0.500000000"
            # 50 requests of ~23 tokens each on two nodes at once cross the 60-token threshold together.
            await asyncio.gather(
                use_tokens(first, referred_key, 25), use_tokens(second, referred_key, 25)
            )

            async def rewarded() -> bool:
                return await reward_entries(first, referrer_id) >= 1

            await until(rewarded)
            # Both nodes' checks run several times more, at once (counted runs, not a wait).
            for _ in range(3):
                again = await asyncio.gather(
                    first.core.accounts.referrals.verify_due(),
                    second.core.accounts.referrals.verify_due(),
                )
                assert again == [0, 0]
            assert await reward_entries(first, referrer_id) == 1
            assert await reward_entries(first, referred_id) == 1
            async with first.http() as http:
                [done] = (
                    await http.get(
                        "/v1/account/referrals", headers={"authorization": f"Bearer {referrer_key}"}
                    )
                ).json()["data"]
            assert done["status"] == "verified"
            referrer_balance = await first.balance(referrer_id)
            assert referrer_balance.balance_nanos == REWARD * 2  # welcome bonus + reward
            await first.verify_ledger()


async def test_shared_signals_and_revoked_privileges_earn_nothing(upstream, tmp_path) -> None:
    async with running_kyma(tmp_path, None, upstream, "sqlite", **FAST) as kyma:
        # A referrer signed up from a device, then "refers" itself from the same device.
        referrer_id, referrer_key = await signup_with(
            kyma, "owner@example.com", "", fingerprint="laptop-1"
        )
        code = (await account_of(kyma, referrer_key))["referral_code"]
        twin_id, twin_key = await signup_with(
            kyma, "owner.alt@example.com", code, fingerprint="laptop-1"
        )
        # A second referrer loses its privileges before its referral verifies.
        other_id, other_key = await kyma.create_account()
        other_code = (await account_of(kyma, other_key))["referral_code"]
        friend_id, friend_key = await signup_with(
            kyma, "friend@example.com", other_code, fingerprint="phone-9"
        )
        code_, _, _ = await kyma_cli(
            kyma, "admin", "accounts", "revoke-referrals", other_id, "--reason", "bot farm"
        )
        assert code_ == 0
        await use_tokens(kyma, twin_key, 5)
        await use_tokens(kyma, friend_key, 5)
        # Their usage is recorded and a check has run since (one of our own, not a wait).
        await kyma.settled()
        assert await kyma.core.accounts.referrals.verify_due() == 0
        assert (
            await reward_entries(kyma, referrer_id) == 0
            and await reward_entries(kyma, twin_id) == 0
        )
        assert (
            await reward_entries(kyma, other_id) == 0 and await reward_entries(kyma, friend_id) == 0
        )
        code_, out, _ = await kyma_cli(kyma, "admin", "referrals", "list", "--flagged")
        assert code_ == 0
        assert "same client fingerprint" in out and "referral privileges are revoked" in out
        await kyma.verify_ledger()


async def test_unknown_code_is_refused_and_program_off_pays_nothing(upstream, tmp_path) -> None:
    async with running_kyma(tmp_path, None, upstream, "sqlite", **FAST) as kyma:
        async with kyma.http() as http:
            bad = await http.post(
                "/v1/auth/signup", json={"email": "x@example.com", "referral_code": "ZZZZZZZZ"}
            )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "referral_code"
        referrer_id, referrer_key = await kyma.create_account()
        code = (await account_of(kyma, referrer_key))["referral_code"]
        referred_id, referred_key = await signup_with(kyma, "late@example.com", code)
    # The same database, the program switched off: the referral stays pending, nothing is paid.
    async with running_kyma(
        tmp_path, None, upstream, "sqlite", referrals_enabled=False, **FAST
    ) as off:
        await use_tokens(off, referred_key, 5)
        await off.settled()
        assert await off.core.accounts.referrals.verify_due() == 0  # a check has run since
        assert await reward_entries(off, referrer_id) == 0
        async with off.http() as http:
            listed = (
                await http.get(
                    "/v1/account/referrals", headers={"authorization": f"Bearer {referrer_key}"}
                )
            ).json()
        assert listed["program_enabled"] is False and listed["data"][0]["status"] == "pending"
        assert listed["tokens_required"] == 60
