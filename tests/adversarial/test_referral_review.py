"""Referrals refused by mistake (issue 12, part 5), against a real core and bridge on PostgreSQL.

Two people signing up from one address (an office, a campus, carrier NAT) put their referral
under review instead of rejecting it; an admin approves it — rewards paid exactly once, however
often or concurrently it is approved, through gRPC and the CLI — or rejects it, and nothing is
paid. A shared device fingerprint or a revoked referrer still earns nothing. The user sees the
state in GET /v1/account/referrals throughout. Counts and states only, no waiting on time: the
periodic check is run by hand where it matters.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest_asyncio
from sqlalchemy import select

from core_service.db.models import AuditEntry
from kyma.admin.v1 import admin_service_pb2 as admin_pb
from tests.conftest import ADMIN_TOKEN, running_kyma  # type: ignore[import-not-found]
from tests.integration.test_accounts import verify  # type: ignore[import-not-found]
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]
from tests.integration.test_referrals import (  # type: ignore[import-not-found]
    FAST,
    reward_entries,
    use_tokens,
)

OFFICE = "198.51.100.7"  # one public address behind which many people sit


@pytest_asyncio.fixture(scope="module")
async def office(upstream, pg_url, tmp_path_factory):
    # The periodic check is off (a day apart): the tests run it themselves, so that what they
    # see does not depend on when it happens to run.
    settings = {**FAST, "referral_check_interval_seconds": 86_400}
    async with running_kyma(
        tmp_path_factory.mktemp("office"), pg_url, upstream, "postgres", **settings
    ) as kyma:
        yield kyma
        await kyma.verify_ledger()


async def sign_up(kyma, address: str, *, ip: str, fingerprint: str, code: str = "") -> tuple:
    async with kyma.http() as http:
        started = await http.post(
            "/v1/auth/signup",
            json={"email": address, "referral_code": code} if code else {"email": address},
            headers={"x-forwarded-for": ip, "x-client-fingerprint": fingerprint},
        )
    assert started.status_code == 200, started.text
    status, body = await verify(kyma, address, kyma.last_code(address))
    assert status == 201, body
    return body["id"], body["api_key"]


async def seen_by(kyma, key: str) -> list[dict]:
    async with kyma.http() as http:
        reply = await http.get("/v1/account/referrals", headers={"authorization": f"Bearer {key}"})
    assert reply.status_code == 200
    return reply.json()["data"]


async def referral_code(kyma, key: str) -> str:
    async with kyma.http() as http:
        reply = await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})
    return reply.json()["referral_code"]


async def colleagues(kyma, name: str) -> tuple[tuple[str, str], tuple[str, str], str]:
    """A referrer and the colleague it referred, from the office's one address, on two
    different devices: ((referrer id, key), (referred id, key), referral id)."""
    referrer = await sign_up(kyma, f"{name}-a@example.com", ip=OFFICE, fingerprint=f"{name}-pc1")
    referred = await sign_up(
        kyma,
        f"{name}-b@example.com",
        ip=OFFICE,
        fingerprint=f"{name}-pc2",
        code=await referral_code(kyma, referrer[1]),
    )
    [referral] = await seen_by(kyma, referrer[1])
    assert referral["status"] == "under_review" and referral["flagged"] is True
    return referrer, referred, referral["id"]


async def review(kyma, referral_id: str, decision: int) -> str:
    """The referral's state after the decision, or the refusal's status code name."""
    try:
        reply = await kyma.admin(
            "ReviewReferral",
            admin_pb.ReviewReferralRequest(
                referral_id=referral_id,
                decision=decision,
                justification=admin_pb.Justification(actor="ops", reason="same office"),
            ),
        )
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return str(reply.referral.status)


async def audited(kyma, action: str, referral_id: str) -> int:
    async with kyma.core.storage.reads.connect() as conn:
        details = (
            await conn.scalars(select(AuditEntry.details).where(AuditEntry.action == action))
        ).all()
    return sum(referral_id in d for d in details)


async def test_same_address_is_reviewed_then_approved_and_paid_once(office) -> None:
    kyma = office
    (referrer_id, referrer_key), (referred_id, referred_key), referral_id = await colleagues(
        kyma, "approve"
    )
    # Past the threshold, but under review: nothing is paid.
    await use_tokens(kyma, referred_key, 5)
    await kyma.settled()
    assert await kyma.core.accounts.referrals.verify_due() == 0
    assert await reward_entries(kyma, referrer_id) == 0

    # Approved four times at once over gRPC, and twice through the CLI.
    approve = admin_pb.REFERRAL_DECISION_APPROVE
    grpc_outcomes, cli_outcomes = await asyncio.gather(
        asyncio.gather(*(review(kyma, referral_id, approve) for _ in range(4))),
        asyncio.gather(
            *(
                kyma_cli(kyma, "admin", "referrals", "approve", referral_id, "--reason", "ok")
                for _ in range(2)
            )
        ),
    )
    successes = [o for o in grpc_outcomes if o != "INVALID_ARGUMENT"] + [
        out for code, out, _ in cli_outcomes if code == 0
    ]
    assert len(successes) == 1, (grpc_outcomes, cli_outcomes)
    refusals = [err for code, _, err in cli_outcomes if code != 0]
    assert all("only a referral under review can be approved" in err for err in refusals)

    # Paid once, and nothing more however often the checks run on top.
    assert await kyma.core.accounts.referrals.verify_due() == 0
    assert await reward_entries(kyma, referrer_id) == 1
    assert await reward_entries(kyma, referred_id) == 1
    assert [r["status"] for r in await seen_by(kyma, referrer_key)] == ["verified"]
    assert await audited(kyma, "approve_referral", referral_id) == 1
    assert await review(kyma, referral_id, approve) == "INVALID_ARGUMENT"


async def test_approved_before_the_threshold_pays_when_it_is_reached(office) -> None:
    kyma = office
    (referrer_id, referrer_key), (referred_id, referred_key), referral_id = await colleagues(
        kyma, "early"
    )
    code, out, _ = await kyma_cli(
        kyma, "admin", "referrals", "approve", referral_id, "--reason", "checked", "--json"
    )
    assert code == 0 and json.loads(out)["referral"]["status"] == "REFERRAL_STATUS_PENDING"
    assert [r["status"] for r in await seen_by(kyma, referrer_key)] == ["pending"]
    assert await reward_entries(kyma, referrer_id) == 0

    await use_tokens(kyma, referred_key, 5)
    await kyma.settled()
    assert await kyma.core.accounts.referrals.verify_due() == 1
    assert await reward_entries(kyma, referrer_id) == await reward_entries(kyma, referred_id) == 1


async def test_rejected_on_review_earns_nothing(office) -> None:
    kyma = office
    (referrer_id, referrer_key), (referred_id, referred_key), referral_id = await colleagues(
        kyma, "reject"
    )
    code, out, _ = await kyma_cli(
        kyma, "admin", "referrals", "reject", referral_id, "--reason", "one person, two mails"
    )
    assert code == 0 and "rejected" in out
    await use_tokens(kyma, referred_key, 5)
    await kyma.settled()
    assert await kyma.core.accounts.referrals.verify_due() == 0
    assert await review(kyma, referral_id, admin_pb.REFERRAL_DECISION_APPROVE) == (
        "INVALID_ARGUMENT"
    )
    assert await reward_entries(kyma, referrer_id) == await reward_entries(kyma, referred_id) == 0
    assert [r["status"] for r in await seen_by(kyma, referrer_key)] == ["rejected"]
    assert await audited(kyma, "reject_referral", referral_id) == 1


async def test_a_revoked_referrer_earns_nothing_even_when_approved(office) -> None:
    kyma = office
    (referrer_id, _), (referred_id, referred_key), referral_id = await colleagues(kyma, "revoked")
    await kyma.admin(
        "RevokeReferrals",
        admin_pb.RevokeReferralsRequest(
            account_id=referrer_id,
            justification=admin_pb.Justification(actor="ops", reason="farm"),
        ),
    )
    await use_tokens(kyma, referred_key, 5)
    await kyma.settled()
    assert await review(kyma, referral_id, admin_pb.REFERRAL_DECISION_APPROVE) != (
        "INVALID_ARGUMENT"
    )
    assert await kyma.core.accounts.referrals.verify_due() == 0
    assert await reward_entries(kyma, referrer_id) == await reward_entries(kyma, referred_id) == 0


async def test_a_shared_device_is_still_rejected_outright(office) -> None:
    kyma = office
    referrer_id, referrer_key = await sign_up(
        kyma, "device-a@example.com", ip=OFFICE, fingerprint="shared-laptop"
    )
    await sign_up(
        kyma,
        "device-b@example.com",
        ip=OFFICE,
        fingerprint="shared-laptop",
        code=await referral_code(kyma, referrer_key),
    )
    [referral] = await seen_by(kyma, referrer_key)
    assert referral["status"] == "rejected"
    # Not open to review: only referrals under review (or pending) are decided.
    assert await review(kyma, referral["id"], admin_pb.REFERRAL_DECISION_APPROVE) == (
        "INVALID_ARGUMENT"
    )
    code, out, _ = await kyma_cli(kyma, "admin", "referrals", "list", "--status", "rejected")
    assert code == 0 and "same client fingerprint" in out
    *_, waiting = await colleagues(kyma, "listed")
    code, out, _ = await kyma_cli(
        kyma, "admin", "referrals", "list", "--status", "under_review", "--json"
    )
    assert code == 0
    listed = json.loads(out)["referrals"]
    assert waiting in {r["id"] for r in listed}
    assert all(r["status"] == "REFERRAL_STATUS_UNDER_REVIEW" for r in listed)
    assert ADMIN_TOKEN not in out
