"""The terms of service, versioned (SPEC §3): served as JSON, accepted at sign-up (only the
current version), a newer version shown as a notice in GET /v1/account until it is accepted,
and continued use under it recorded once, off the request path — not a write per request."""

from __future__ import annotations

import secrets

import pytest
import pytest_asyncio
from sqlalchemy import select, update

from core_service.db.models import Account
from tests.conftest import ISSUED_KEYS, running_kyma  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio
OLD, NEW = "2026-04-07", "2026-12-01"


async def test_the_packaged_terms_are_served(kyma) -> None:
    async with kyma.http() as http:
        reply = await http.get("/v1/terms")
    terms = reply.json()
    assert reply.status_code == 200 and terms["version"] == OLD
    assert terms["text"].startswith("Terms of Service") and "Continued use" in terms["text"]
    assert terms["published_at"] == 1775520000  # 2026-04-07T00:00:00Z


@pytest_asyncio.fixture(scope="module")
async def changed(upstream, tmp_path_factory):
    """A Kyma whose operator published new terms (two versions in its terms directory)."""
    tmp = tmp_path_factory.mktemp("terms")
    folder = tmp / "terms"
    folder.mkdir()
    (folder / f"{OLD}.txt").write_text("Terms of Service\n\nThe old terms.\n")
    (folder / f"{NEW}.txt").write_text("Terms of Service\n\nThe new terms.\n")
    async with running_kyma(tmp, None, upstream, "sqlite", terms_dir=folder) as kyma:
        yield kyma


async def _sign_up(kyma, address: str, version: str) -> tuple[int, dict]:
    async with kyma.http() as http:
        assert (await http.post("/v1/auth/signup", json={"email": address})).status_code == 200
        reply = await http.post(
            "/v1/auth/verify",
            json={
                "email": address,
                "code": kyma.last_code(address),
                "accepted_terms_version": version,
            },
        )
    if reply.status_code == 201:
        ISSUED_KEYS.add(reply.json()["api_key"])
    return reply.status_code, reply.json()


async def _account(kyma, key: str) -> dict:
    async with kyma.http() as http:
        return (await http.get("/v1/account", headers={"authorization": f"Bearer {key}"})).json()


async def test_sign_up_accepts_the_current_terms_only(changed) -> None:
    async with changed.http() as http:
        assert (await http.get("/v1/terms")).json()["version"] == NEW
    address = f"terms-{secrets.token_hex(3)}@example.com"
    status, body = await _sign_up(changed, address, OLD)
    assert status == 400 and body["error"]["param"] == "accepted_terms_version"
    assert NEW in body["error"]["message"]
    status, created = await _sign_up(changed, address, NEW)
    assert status == 201
    account = await _account(changed, created["api_key"])
    assert account["terms"]["accepted_version"] == NEW and account["terms"]["accepted_at"]
    assert account["terms"]["needs_acceptance"] is False
    assert [n for n in account["notices"] if n["kind"] == "terms_changed"] == []


async def test_new_terms_show_a_notice_and_continued_use_is_recorded_once(changed) -> None:
    address = f"continued-{secrets.token_hex(3)}@example.com"
    status, created = await _sign_up(changed, address, NEW)
    assert status == 201
    key, account_id = created["api_key"], created["id"]
    # As if this account had signed up before the new terms were published.
    async with changed.core.engine.begin() as conn:
        await conn.execute(
            update(Account).where(Account.id == account_id).values(terms_version=OLD)
        )
    changed.core.accounts.authenticator.forget_account(account_id)
    account = await _account(changed, key)
    assert account["terms"]["needs_acceptance"] is True
    assert account["terms"]["current_version"] == NEW
    notice = account["notices"][0]
    assert notice["kind"] == "terms_changed" and NEW in notice["message"]
    assert "/terms" in notice["message"]
    async with changed.client(key) as sdk:
        for _ in range(3):
            await sdk.chat.completions.create(
                model="kyma-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    # Written by the periodic flush of keys' last use (here, now), not by the requests.
    await changed.core.accounts.flush_last_used()
    version, since = await _in_use(changed, account_id)
    assert version == NEW and since is not None
    async with changed.client(key) as sdk:
        await sdk.models.list()
    await changed.core.accounts.flush_last_used()
    assert await _in_use(changed, account_id) == (NEW, since)  # recorded once
    account = await _account(changed, key)
    assert account["terms"]["in_use_version"] == NEW and account["terms"]["needs_acceptance"]
    async with changed.http() as http:
        headers = {"authorization": f"Bearer {key}"}
        stale = await http.post("/v1/account/terms/accept", json={"version": OLD}, headers=headers)
        assert stale.status_code == 400
        accepted = await http.post(
            "/v1/account/terms/accept", json={"version": NEW}, headers=headers
        )
    assert accepted.status_code == 200 and accepted.json()["needs_acceptance"] is False
    account = await _account(changed, key)
    assert account["terms"]["accepted_version"] == NEW
    assert [n for n in account["notices"] if n["kind"] == "terms_changed"] == []


async def _in_use(kyma, account_id: str) -> tuple:
    async with kyma.core.engine.connect() as conn:
        row = (
            await conn.execute(
                select(Account.terms_in_use_version, Account.terms_in_use_since).where(
                    Account.id == account_id
                )
            )
        ).one()
    return row.terms_in_use_version, row.terms_in_use_since
