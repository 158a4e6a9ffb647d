"""Accounts as a newcomer and an admin meet them: sign-up by email code, one account per
person, key management, notices and enforcement."""

from __future__ import annotations

import asyncio

import openai
import pytest
import pytest_asyncio

from tests.conftest import ISSUED_KEYS, running_kyma  # type: ignore[import-not-found]
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio


async def signup(kyma, address: str, **extra) -> tuple[int, dict]:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/auth/signup",
            json={"email": address, **extra},
            headers=extra.pop("headers", {}) if "headers" in extra else {},
        )
    return reply.status_code, reply.json()


async def verify(kyma, address: str, code: str) -> tuple[int, dict]:
    async with kyma.http() as http:
        reply = await http.post("/v1/auth/verify", json={"email": address, "code": code})
    body = reply.json()
    if reply.status_code == 201:
        ISSUED_KEYS.add(body["api_key"])
    return reply.status_code, body


async def sign_up(kyma, address: str) -> dict:
    status, _ = await signup(kyma, address)
    assert status == 200
    status, body = await verify(kyma, address, kyma.last_code(address))
    assert status == 201, body
    return body


async def test_signup_verify_and_call_the_model(kyma) -> None:
    address = f"newcomer-{kyma.backend}@example.com"
    status, started = await signup(kyma, address)
    assert status == 200 and started["status"] == "code_sent" and started["expires_in"] == 900
    [mail] = kyma.mails_to(address)
    assert "Kyma sign-up code" in mail["Subject"]
    status, created = await verify(kyma, address, kyma.last_code(address))
    assert status == 201 and created["api_key"].startswith("ky_") and created["email"] == address
    async with kyma.client(created["api_key"]) as sdk:
        reply = await sdk.chat.completions.create(
            model="kyma-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert reply.choices[0].message.content
    async with kyma.http() as http:
        account = (
            await http.get("/v1/account", headers={"authorization": f"Bearer {created['api_key']}"})
        ).json()
    assert (
        account["balance_usd"] == "0.500000000" and account["notices"] == []
    )  # welcome bonus; demo is free here


async def test_codes_are_single_use_and_wrong_codes_refused(kyma) -> None:
    address = f"single-{kyma.backend}@example.com"
    await signup(kyma, address)
    code = kyma.last_code(address)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert (await verify(kyma, address, wrong))[0] == 400
    assert (await verify(kyma, address, "12ab56"))[0] == 400
    assert (await verify(kyma, address, code))[0] == 201
    status, body = await verify(kyma, address, code)
    assert status == 400 and "wrong or has expired" in body["error"]["message"]


async def test_a_code_dies_after_five_wrong_guesses(kyma) -> None:
    address = f"guesser-{kyma.backend}@example.com"
    await signup(kyma, address)
    code = kyma.last_code(address)
    for guess in range(5):
        candidate = f"{(int(code) + 1 + guess) % 10**6:06d}"
        assert (await verify(kyma, address, candidate))[0] == 400
    assert (await verify(kyma, address, code))[0] == 400  # even the right one, now


@pytest.mark.parametrize(
    "first, second",
    [
        ("ab@gmail.com", "A.b+x@googlemail.com"),
        ("ab@example.com", "Ab@Example.com"),
        ("c.d+work@outlook.com", "C.D@outlook.com"),
        ("ab@proton.me", "A_b+x@pm.me"),
        ("ab@fastmail.com", "Ab+shop@fastmail.com"),
    ],
)
async def test_one_account_per_person(kyma, first: str, second: str) -> None:
    first, second = f"{kyma.backend}.{first}", f"{kyma.backend}.{second}"
    await sign_up(kyma, first)
    status, body = await signup(kyma, second)
    assert status == 409 and "one account per person" in body["error"]["message"]


@pytest.mark.parametrize(
    "address",
    [
        "not-an-email",
        "a@b",
        "x" * 10_000 + "@example.com",
        "' OR 1=1 --@example.com",
        "robert'); DROP TABLE accounts;--@example.com",
        "admin@exam\u0440le.com\u202e",
        "",
        "a@@example.com",
        "throwaway@mailinator.com",
    ],
)
async def test_bad_addresses_are_refused_and_nothing_is_created(kyma, address: str) -> None:
    status, body = await signup(kyma, address)
    assert status == 400 and body["error"]["param"] == "email"
    status, body = await verify(kyma, address, "123456")
    assert status == 400


async def test_wrong_types_are_400(kyma) -> None:
    async with kyma.http() as http:
        for body in (
            {"email": 5},
            {"email": ["a@example.com"]},
            [1],
            {"email": "a@example.com", "referral_code": {}},
        ):
            reply = await http.post("/v1/auth/signup", json=body)
            assert reply.status_code == 400, body
        malformed = await http.post("/v1/auth/verify", content=b"{not json")
        assert malformed.status_code == 400


async def test_key_management(kyma, account) -> None:
    _, key = account
    auth = {"authorization": f"Bearer {key}"}
    async with kyma.http() as http:
        created = await http.post("/v1/account/keys", json={"name": "ci runner"}, headers=auth)
        assert created.status_code == 201
        secret = created.json()["key"]
        ISSUED_KEYS.add(secret)
        listed = (await http.get("/v1/account/keys", headers=auth)).json()["data"]
        assert [k["name"] for k in listed] == ["ci runner", "default"]
        assert all("key" not in k and k["prefix"].startswith("ky_") for k in listed)
        assert listed[0]["prefix"] == secret[:9]
        used = await http.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert used.status_code == 200
        revoked = await http.delete(f"/v1/account/keys/{created.json()['id']}", headers=auth)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        refused = await http.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert refused.status_code == 401  # at once on the node that revoked it
        assert (await http.delete("/v1/account/keys/key_nope", headers=auth)).status_code == 404
        bad_name = await http.post("/v1/account/keys", json={"name": "x" * 101}, headers=auth)
        assert bad_name.status_code == 400


async def test_last_used_is_recorded(kyma, account) -> None:
    _, key = account
    async with kyma.http() as http:
        await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        # Last use is written for all keys at once, every half minute: do it now.
        assert await kyma.core.accounts.authenticator.flush_last_used() >= 1
        [listed] = (
            await http.get("/v1/account/keys", headers={"authorization": f"Bearer {key}"})
        ).json()["data"]
    assert listed["last_used_at"] is not None


async def test_revocation_reaches_another_core_through_the_event_feed(upstream, tmp_path) -> None:
    """The other core caches key lookups for minutes; a revocation on the first still reaches it,
    through the account-event feed it polls twice a second (a liveness bound of 30 s here: the
    cache alone would take 300)."""
    async with running_kyma(tmp_path, None, upstream, "sqlite") as first:
        async with running_kyma(
            tmp_path, None, upstream, "sqlite", key_cache_seconds=300
        ) as second:
            account_id, key = await first.create_account()
            auth = {"authorization": f"Bearer {key}"}
            async with first.http() as one, second.http() as two:
                extra = (
                    await one.post("/v1/account/keys", json={"name": "doomed"}, headers=auth)
                ).json()
                ISSUED_KEYS.add(extra["key"])
                doomed = {"authorization": f"Bearer {extra['key']}"}
                assert (
                    await two.get("/v1/models", headers=doomed)
                ).status_code == 200  # cached there, for 300 s
                await one.delete(f"/v1/account/keys/{extra['id']}", headers=auth)
                status = 200
                for _ in range(300):
                    status = (await two.get("/v1/models", headers=doomed)).status_code
                    if status == 401:
                        break
                    await asyncio.sleep(0.1)
                assert status == 401


async def test_enforcement_through_the_cli(kyma) -> None:
    account_id, key = await kyma.create_account()
    auth = {"authorization": f"Bearer {key}"}
    hi = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    code, _, _ = await kyma_cli(
        kyma,
        "admin",
        "accounts",
        "warn",
        account_id,
        "--message",
        "Please stop sharing your key.",
        "--reason",
        "key seen on a forum",
        "--actor",
        "ops-ana",
    )
    assert code == 0
    async with kyma.http() as http:
        account = (await http.get("/v1/account", headers=auth)).json()
    warnings = [n["message"] for n in account["notices"] if n["kind"] == "warning"]
    assert warnings == ["Please stop sharing your key."]

    code, _, _ = await kyma_cli(
        kyma,
        "admin",
        "accounts",
        "suspend",
        account_id,
        "--until",
        "2h",
        "--reason",
        "abusive prompts",
        "--actor",
        "ops-ana",
    )
    assert code == 0
    await kyma.account_changes_seen()
    async with kyma.http() as http:
        refused = await http.post("/v1/chat/completions", json=hi, headers=auth)
        account = (await http.get("/v1/account", headers=auth)).json()
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (
        error["code"] == "account_suspended"
        and "abusive prompts" in error["message"]
        and "until" in error["message"]
    )
    assert account["status"] == "suspended" and account["suspended_until"]

    code, _, _ = await kyma_cli(
        kyma, "admin", "accounts", "ban", account_id, "--reason", "repeat abuse"
    )
    assert code == 0
    await kyma.account_changes_seen()
    async with kyma.client(key) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as banned:
            await sdk.chat.completions.create(**hi)
    assert banned.value.code == "account_banned"

    code, _, _ = await kyma_cli(
        kyma, "admin", "accounts", "unban", account_id, "--reason", "appeal granted"
    )
    assert code == 0
    code, out, _ = await kyma_cli(
        kyma, "admin", "accounts", "reset-credits", account_id, "--reason", "bonus abuse", "--json"
    )
    assert code == 0 and '"available"' in out
    await kyma.account_changes_seen()
    async with kyma.http() as http:
        poor = await http.post("/v1/chat/completions", json=hi, headers=auth)
        ledger = (await http.get("/v1/account/ledger", headers=auth)).json()["data"]
    assert poor.status_code == 402  # reinstated, but with no credit left
    assert ledger[0]["kind"] == "credit_reset" and ledger[0]["amount_usd"] == "-0.500000000"
    assert (await kyma.balance(account_id)).balance_nanos == 0

    code, out, _ = await kyma_cli(kyma, "admin", "audit", "--account", account_id)
    assert code == 0
    actions = [line.split()[3] for line in out.strip().splitlines()]
    assert actions == ["reset_credits", "reinstate", "ban", "suspend", "warn"]
    assert "ops-ana" in out and "abusive prompts" in out


async def test_shared_signals_are_visible_to_admins(kyma) -> None:
    fingerprint = f"device-{kyma.backend}-42"
    addresses = [f"twin-{i}-{kyma.backend}@example.com" for i in range(2)]
    for address in addresses:
        async with kyma.http() as http:
            await http.post(
                "/v1/auth/signup",
                json={"email": address},
                headers={"x-client-fingerprint": fingerprint},
            )
        await verify(kyma, address, kyma.last_code(address))
    code, out, _ = await kyma_cli(kyma, "admin", "accounts", "list", "--shared-signals")
    assert code == 0 and all(address in out for address in addresses)
    account_id = next(line.split()[0] for line in out.splitlines() if addresses[0] in line)
    code, out, _ = await kyma_cli(kyma, "admin", "accounts", "show", account_id)
    assert code == 0 and fingerprint in out and addresses[1] in out


@pytest_asyncio.fixture
async def strict(upstream, tmp_path):
    async with running_kyma(
        tmp_path,
        None,
        upstream,
        "sqlite",
        signups_per_ip_per_minute=3,
        signups_per_email_per_minute=2,
        verifications_per_ip_per_minute=4,
        signup_code_ttl_seconds=1,
    ) as kyma:
        yield kyma


async def test_signup_and_guessing_are_limited_per_address(strict) -> None:
    assert (await signup(strict, "one@example.com"))[0] == 200
    assert (await signup(strict, "one@example.com"))[0] == 200
    status, body = await signup(strict, "one@example.com")
    assert status == 429 and "Too many sign-up requests" in body["error"]["message"]
    assert (await signup(strict, "two@example.com"))[0] == 200
    assert (await signup(strict, "three@example.com"))[0] == 429  # 3 per client address
    for _ in range(4):
        assert (await verify(strict, "two@example.com", "000000"))[0] in (400,)
    status, _ = await verify(strict, "two@example.com", strict.last_code("two@example.com"))
    assert status == 429  # brute force stops at the address, whatever the guess


async def test_codes_expire(strict) -> None:
    assert (await signup(strict, "late@example.com"))[0] == 200
    await asyncio.sleep(1.1)
    status, body = await verify(strict, "late@example.com", strict.last_code("late@example.com"))
    assert status == 400 and "expired" in body["error"]["message"]
