"""Low-balance alerts (SPEC §4): one mail per crossing of the account's threshold — not one
per request — armed again once the balance is back above it, and claimed exactly once however
many cores see the crossing (file mail backend)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from core_service.billing.low_balance import LowBalanceAlerts
from core_service.clock import SystemClock
from tests.fakes.waiting import until
from tests.integration.test_credits import hi, set_balance  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

START = 3_000_000  # $0.003
THRESHOLD = "0.002"


async def _spend_below(kyma, key: str, account_id: str) -> None:
    """Requests until the available balance is under the threshold (a few)."""
    async with kyma.http() as http:
        for _ in range(40):
            reply = await http.post(
                "/v1/chat/completions", json=hi(100), headers={"authorization": f"Bearer {key}"}
            )
            assert reply.status_code == 200, reply.text
            if (await kyma.balance(account_id)).available_nanos < 2_000_000:
                return
    raise AssertionError("the balance never went under the threshold")


def _alerts(kyma, address: str) -> list:
    return [m for m in kyma.mails_to(address) if "balance is below" in m["Subject"]]


async def _mailed(kyma, address: str, count: int) -> list:
    """The alerts to `address` once there are `count`: the core's own chore runs the same check
    every few seconds, and when it claims a crossing first, its mail is written (on a thread)
    after the test's own `check()` found nothing left to claim."""

    async def arrived() -> bool:
        return len(_alerts(kyma, address)) >= count

    await until(arrived, f"{count} alert(s) to {address}")
    found = _alerts(kyma, address)
    assert len(found) == count, found
    return found


async def test_one_mail_per_crossing_and_armed_again_above(kyma) -> None:
    address = f"low-{kyma.backend}-{secrets.token_hex(3)}@example.com"
    account_id, key = await kyma.create_account(address)
    await set_balance(kyma, account_id, START)
    async with kyma.http() as http:
        reply = await http.patch(
            "/v1/account",
            json={"low_balance_threshold_usd": THRESHOLD},
            headers={"authorization": f"Bearer {key}"},
        )
    assert reply.status_code == 200 and reply.json()["low_balance_threshold_usd"] == "0.002000000"
    alerts = kyma.core.billing.low_balance
    await alerts.check()
    assert _alerts(kyma, address) == []  # above it
    await _spend_below(kyma, key, account_id)
    await alerts.check()
    [mail] = await _mailed(kyma, address, 1)
    assert "$0.002" in mail["Subject"] and "Add credits" in mail.get_content()
    async with kyma.http() as http:  # more requests below the threshold: no more mail
        for _ in range(3):
            await http.post(
                "/v1/chat/completions", json=hi(10), headers={"authorization": f"Bearer {key}"}
            )
    await kyma.settled()
    await alerts.check()
    assert len(_alerts(kyma, address)) == 1
    await set_balance(kyma, account_id, START)  # bought credits: above it again
    await alerts.check()
    assert len(_alerts(kyma, address)) == 1
    await _spend_below(kyma, key, account_id)  # a second crossing
    await alerts.check()
    await _mailed(kyma, address, 2)


async def test_a_crossing_seen_by_many_cores_mails_once(kyma) -> None:
    address = f"nodes-{kyma.backend}-{secrets.token_hex(3)}@example.com"
    account_id, _ = await kyma.create_account(address)
    await set_balance(kyma, account_id, 1_000_000)
    await kyma.core.accounts.store.set_low_balance_threshold(account_id, 2_000_000)
    cores = [
        LowBalanceAlerts(
            kyma.core.engine,
            SystemClock(),
            kyma.core.accounts.mailer,
            charged=lambda: {account_id},
            billing_link="http://127.0.0.1/console/billing",
        )
        for _ in range(4)
    ]
    sent = await asyncio.gather(
        *(core.check() for core in cores), kyma.core.billing.low_balance.check()
    )
    assert sum(sent) <= 1
    await _mailed(kyma, address, 1)


async def test_thresholds_are_validated_and_cleared(kyma, account) -> None:
    headers = {"authorization": f"Bearer {account[1]}"}
    async with kyma.http() as http:
        for bad in ("-1", "lots", [5], True):
            reply = await http.patch(
                "/v1/account", json={"low_balance_threshold_usd": bad}, headers=headers
            )
            assert reply.status_code == 400, bad
            assert reply.json()["error"]["param"] == "low_balance_threshold_usd"
        assert (
            await http.patch("/v1/account", json={"tier": 4}, headers=headers)
        ).status_code == 400
        await http.patch("/v1/account", json={"low_balance_threshold_usd": 5}, headers=headers)
        reply = await http.patch(
            "/v1/account", json={"low_balance_threshold_usd": None}, headers=headers
        )
    assert reply.status_code == 200 and reply.json()["low_balance_threshold_usd"] is None
