"""Keys their owners limited, through the real bridge and core on SQLite and PostgreSQL: a spend
cap decided in the same hold as the balance (200 requests at once on a key capped at ten
requests' worth get at most ten through), a cap that starts again each UTC day (injected
clock), an expiry, a model allow-list refused in OpenAI's shape, and limits a limited key
cannot lift."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from core_service.billing.pricing import nanos_to_usd
from kyma.accounting.v1 import accounting_service_pb2 as pb
from kyma.accounting.v1 import accounting_service_pb2_grpc as pb_grpc
from kyma.admin.v1 import admin_service_pb2
from tests.conftest import ISSUED_KEYS, running_kyma  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock  # type: ignore[import-not-found]
from tests.integration.test_credits import hi, set_balance  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def new_key(kyma, owner_key: str, **limits) -> dict:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/account/keys", json={"name": "limited", **limits}, headers=_auth(owner_key)
        )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    ISSUED_KEYS.add(body["secret"])
    assert body["key"] == body["secret"]
    return body


async def key_view(kyma, owner_key: str, key_id: str) -> dict:
    async with kyma.http() as http:
        listed = (await http.get("/v1/account/keys", headers=_auth(owner_key))).json()["data"]
    return next(k for k in listed if k["id"] == key_id)


async def test_200_requests_on_a_key_capped_at_ten_requests_worth_admit_at_most_ten(
    kyma,
) -> None:
    # What one request costs (the same every time: the test upstream's usage is fixed), measured
    # on another account, so that the 200 have tier 4's 200 requests a minute per model to
    # themselves.
    _, other = await kyma.create_account()
    probe = await new_key(kyma, other)
    async with kyma.http() as http:
        first = await http.post(
            "/v1/chat/completions", json=hi(100), headers=_auth(probe["secret"])
        )
    assert first.status_code == 200
    await kyma.settled()
    cost = round(float((await key_view(kyma, other, probe["id"]))["spent_usd"]) * 1e9)
    assert cost > 0
    account_id, owner = await kyma.create_account()
    await set_balance(kyma, account_id, 10**10)  # the balance is never what stops them
    await kyma.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=account_id, tier=4))
    await kyma.account_changes_seen()
    cap = 10 * cost + cost // 2  # ten requests' worth, not eleven
    capped = await new_key(kyma, owner, spend_cap_usd=nanos_to_usd(cap))
    await kyma.upstream.control(latency_ms=200)  # many holds open at once
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=120, limits=limits) as http:
        replies = await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json=hi(100), headers=_auth(capped["secret"]))
                for _ in range(200)
            )
        )
    through = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert 1 <= len(through) <= 10, len(through)
    assert {r.status_code for r in refused} == {403}
    assert {r.json()["error"]["code"] for r in refused} == {"key_spend_cap_reached"}
    assert "spend cap" in refused[0].json()["error"]["message"]
    await kyma.settled()
    view = await key_view(kyma, owner, capped["id"])
    spent = round(float(view["spent_usd"]) * 1e9)
    assert spent == len(through) * cost <= cap and view["held_usd"] == "0.000000000"
    assert view["spend_cap_usd"] == nanos_to_usd(cap) and view["cap_interval"] is None


async def test_limits_are_set_changed_and_cleared(kyma) -> None:
    account_id, owner = await kyma.create_account()
    key = await new_key(kyma, owner)
    assert key["spend_cap_usd"] is None and key["allowed_models"] is None
    async with kyma.http() as http:
        changed = await http.patch(
            f"/v1/account/keys/{key['id']}",
            json={
                "spend_cap_usd": "2.50",
                "cap_interval": "weekly",
                "allowed_models": ["kyma-demo"],
                "name": "weekly",
            },
            headers=_auth(owner),
        )
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert body["spend_cap_usd"] == "2.500000000" and body["cap_interval"] == "weekly"
        assert body["allowed_models"] == ["kyma-demo"] and body["name"] == "weekly"
        assert body["cap_resets_at"] is not None and body["spent_usd"] == "0.000000000"
        cleared = await http.patch(
            f"/v1/account/keys/{key['id']}",
            json={"spend_cap_usd": None, "cap_interval": None, "allowed_models": None},
            headers=_auth(owner),
        )
        body = cleared.json()
        assert body["spend_cap_usd"] is None and body["allowed_models"] is None
        assert body["cap_resets_at"] is None and body["name"] == "weekly"
        missing = await http.patch(
            "/v1/account/keys/key_nope", json={"name": "x"}, headers=_auth(owner)
        )
        assert missing.status_code == 404


BAD_LIMITS = [
    ({"spend_cap_usd": "-1"}, "spend_cap_usd"),
    ({"spend_cap_usd": "1e3"}, "spend_cap_usd"),
    ({"spend_cap_usd": [1]}, "spend_cap_usd"),
    ({"cap_interval": "hourly"}, "cap_interval"),
    ({"expires_at": 1}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"allowed_models": []}, "allowed_models"),
    ({"allowed_models": ["no-such-model"]}, "allowed_models"),
    ({"allowed_models": "kyma-demo"}, "allowed_models"),
]


async def test_bad_limits_are_400_naming_the_field(kyma) -> None:
    _, owner = await kyma.create_account()
    async with kyma.http() as http:
        for limits, param in BAD_LIMITS:
            reply = await http.post(
                "/v1/account/keys", json={"name": "bad", **limits}, headers=_auth(owner)
            )
            assert reply.status_code == 400, (limits, reply.text)
            assert reply.json()["error"]["param"] == param, limits
        listed = (await http.get("/v1/account/keys", headers=_auth(owner))).json()["data"]
    assert [k["name"] for k in listed] == ["default"]  # nothing was made


async def test_a_model_outside_the_allow_list_is_a_403_that_says_so(kyma) -> None:
    _, owner = await kyma.create_account()
    key = await new_key(kyma, owner, allowed_models=["kyma-demo"])
    async with kyma.client(key["secret"]) as sdk:
        reply = await sdk.chat.completions.create(
            model="kyma-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await sdk.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        listed = [model.id async for model in sdk.models.list()]
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_allowed"
    assert error["type"] == "permission_error" and error["param"] == "model"
    assert "'test-model'" in error["message"] and "kyma-demo" in error["message"]
    assert listed == ["kyma-demo"]


async def test_a_limited_key_cannot_manage_keys(kyma) -> None:
    _, owner = await kyma.create_account()
    limited = await new_key(kyma, owner, spend_cap_usd="1")
    async with kyma.http() as http:
        for method, path, body in (
            ("POST", "/v1/account/keys", {"name": "escape"}),
            ("PATCH", f"/v1/account/keys/{limited['id']}", {"spend_cap_usd": None}),
            ("DELETE", f"/v1/account/keys/{limited['id']}", None),
        ):
            reply = await http.request(method, path, json=body, headers=_auth(limited["secret"]))
            assert reply.status_code == 403, (method, reply.text)
            assert reply.json()["error"]["code"] == "permission_denied"
        assert (await http.get("/v1/account", headers=_auth(limited["secret"]))).status_code == 200


async def test_limits_over_grpc(kyma) -> None:
    _, owner = await kyma.create_account()
    stub = pb_grpc.AccountingServiceStub(kyma.channel)
    metadata = (("authorization", f"Bearer {owner}"),)
    created = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            name="grpc",
            limits=pb.KeyLimitsInput(
                spend_cap_usd="3",
                cap_interval=pb.CAP_INTERVAL_MONTHLY,
                allowed_models=["kyma-demo"],
            ),
        ),
        metadata=metadata,
    )
    ISSUED_KEYS.add(created.secret)
    assert created.key.spend_cap.usd == "3.000000000"
    assert created.key.cap_interval == pb.CAP_INTERVAL_MONTHLY
    assert list(created.key.allowed_models) == ["kyma-demo"]
    updated = await stub.UpdateApiKey(
        pb.UpdateApiKeyRequest(
            id=created.key.id,
            limits=pb.KeyLimitsInput(),
            update_mask=field_mask_pb2.FieldMask(paths=["spend_cap_usd", "allowed_models"]),
        ),
        metadata=metadata,
    )
    assert not updated.key.HasField("spend_cap") and list(updated.key.allowed_models) == []
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.UpdateApiKey(
            pb.UpdateApiKeyRequest(
                id=created.key.id, update_mask=field_mask_pb2.FieldMask(paths=["owner"])
            ),
            metadata=metadata,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- on a core whose clock the test moves ------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def clocked(upstream, tmp_path_factory):
    clock = FrozenClock()
    async with running_kyma(
        tmp_path_factory.mktemp("key-limits-clock"), None, upstream, "sqlite", clock=clock
    ) as kyma:
        kyma.clock = clock  # type: ignore[attr-defined]
        yield kyma


async def test_a_daily_cap_starts_again_the_next_utc_day(clocked) -> None:
    clock = clocked.clock
    account_id, owner = await clocked.create_account(f"daily-{secrets.token_hex(3)}@example.com")
    await set_balance(clocked, account_id, 10**10)
    await clocked.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=account_id, tier=4))
    await clocked.account_changes_seen()
    key = await new_key(clocked, owner, spend_cap_usd="0.0006", cap_interval="daily")

    async def until_refused() -> int:
        async with clocked.http() as http:
            for through in range(50):
                reply = await http.post(
                    "/v1/chat/completions", json=hi(100), headers=_auth(key["secret"])
                )
                await clocked.settled()
                if reply.status_code != 200:
                    assert reply.status_code == 403
                    assert reply.json()["error"]["code"] == "key_spend_cap_reached"
                    return through
        raise AssertionError("the cap never stopped a request")

    today = await until_refused()
    assert today >= 1
    view = await key_view(clocked, owner, key["id"])
    resets = view["cap_resets_at"]
    assert resets % 86400 == 0 and 0 < resets - clock.now().timestamp() <= 86400
    clock.advance(resets - clock.now().timestamp() + 1)  # just past midnight UTC
    view = await key_view(clocked, owner, key["id"])
    assert view["spent_usd"] == "0.000000000"  # a new period
    assert await until_refused() == today


async def test_an_expired_key_is_refused_from_its_expiry_on(clocked) -> None:
    clock = clocked.clock
    _, owner = await clocked.create_account(f"expiry-{secrets.token_hex(3)}@example.com")
    expires = int((clock.now() + timedelta(hours=1)).timestamp())
    key = await new_key(clocked, owner, expires_at=expires)
    assert key["expires_at"] == expires
    async with clocked.client(key["secret"]) as sdk:
        await sdk.models.list()  # looked up and cached now
        clock.advance(3600)
        with pytest.raises(openai.AuthenticationError) as refused:
            await sdk.chat.completions.create(
                model="kyma-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "key_expired"
    assert "expired at" in error["message"]
