"""Anthropic's Messages API through Kyma with the official `anthropic` SDK, against a deployment
that speaks it natively (passed through) and one that speaks only chat completions
(translated): plain and streamed messages, a tool round trip, count_tokens, and the SDK's typed
errors for Kyma's refusals. Every answer's `usage.cost` is what the ledger charged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2

from kyma.admin.v1 import admin_service_pb2
from tests.conftest import running_kyma  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

NATIVE, TRANSLATED = "native-model", "test-model"
BOTH = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HI = [{"role": "user", "content": "Hello there"}]


@pytest_asyncio.fixture(autouse=True)
async def _upstream_answers_naturally(_fresh_upstream_and_ledger_check: None, upstream) -> None:
    await upstream.control(reply_tokens=12)


@pytest_asyncio.fixture
async def claude(kyma, account):
    async with kyma.anthropic(account[1]) as sdk:
        yield sdk


async def served_by(kyma, model: str, native_path: str = "/v1/messages") -> None:
    paths = (await kyma.upstream.stats())["requests_by_path"]
    if model == NATIVE:
        assert paths.get(native_path), paths
    else:
        assert paths.get("/v1/chat/completions") and native_path not in paths, paths


async def speak_chat_only(kyma, model: str) -> None:
    if model == TRANSLATED:
        await kyma.upstream.control(dialects=["chat"])


def nanos(cost: str) -> int:
    return int(Decimal(cost) * 10**9)


@BOTH
async def test_create(kyma, account, claude: anthropic.AsyncAnthropic, model: str) -> None:
    await speak_chat_only(kyma, model)
    before = (await kyma.balance(account[0])).balance_nanos
    message = await claude.messages.create(
        model=model,
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=HI,
    )
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"
    assert message.usage.output_tokens == 12
    cost = message.usage.cost  # type: ignore[attr-defined]
    assert nanos(cost) == before - (await kyma.balance(account[0])).balance_nanos
    await served_by(kyma, model)
    body = (await kyma.upstream.stats())["last_request"]["body"]
    if model == NATIVE:
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}  # passed through
        assert body["max_tokens"] == 64
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert "cache_control" not in str(body)


@BOTH
async def test_max_tokens_stops_the_message(claude: anthropic.AsyncAnthropic, model: str) -> None:
    message = await claude.messages.create(model=model, max_tokens=5, messages=HI)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5


@BOTH
async def test_stream(kyma, account, claude: anthropic.AsyncAnthropic, model: str) -> None:
    await speak_chat_only(kyma, model)
    before = (await kyma.balance(account[0])).balance_nanos
    costs = []
    async with claude.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
        async for event in stream:
            if event.type == "message_delta":
                costs.append(event.usage.cost)  # type: ignore[attr-defined]
        message = await stream.get_final_message()
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"
    assert message.content[0].text and message.usage.output_tokens == 12
    assert [nanos(c) for c in costs] == [before - (await kyma.balance(account[0])).balance_nanos]
    await served_by(kyma, model)


@BOTH
async def test_tool_round_trip(kyma, claude: anthropic.AsyncAnthropic, model: str) -> None:
    await speak_chat_only(kyma, model)
    ask = [{"role": "user", "content": "Call get_weather for Paris"}]
    asked = await claude.messages.create(model=model, max_tokens=64, messages=ask, tools=[WEATHER])
    assert asked.stop_reason == "tool_use"
    [use] = [block for block in asked.content if block.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city"}  # type: ignore[arg-type]
    conversation: list[Any] = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in asked.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21°C"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    async with claude.messages.stream(
        model=model, max_tokens=64, messages=conversation, tools=[WEATHER]
    ) as stream:
        answered = await stream.get_final_message()
    assert answered.stop_reason == "end_turn" and answered.content[-1].type == "text"
    body = (await kyma.upstream.stats())["last_request"]["body"]
    if model == TRANSLATED:
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["user", "assistant", "tool", "user"]
        assert body["messages"][1]["tool_calls"][0]["id"] == use.id
        assert body["messages"][2] == {
            "role": "tool",
            "tool_call_id": use.id,
            "content": "sunny, 21°C",
        }


@BOTH
async def test_count_tokens(kyma, claude: anthropic.AsyncAnthropic, model: str) -> None:
    counted = await claude.messages.count_tokens(
        model=model, messages=HI, system="Be brief.", tools=[WEATHER]
    )
    assert counted.input_tokens > 0
    stats = await kyma.upstream.stats()
    if model == NATIVE:
        assert stats["requests_by_path"] == {"/v1/messages/count_tokens": 1}
    else:
        assert stats["requests_total"] == 0  # counted by Kyma: nothing to ask the upstream


@BOTH
async def test_typed_errors(kyma, account, upstream, tmp_path, model: str) -> None:
    account_id, key = account
    async with anthropic.AsyncAnthropic(
        base_url=kyma.http_url, api_key="ky_not_a_real_key", max_retries=0
    ) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as unauthorized:
            await stranger.messages.create(model=model, max_tokens=8, messages=HI)
    assert unauthorized.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with kyma.anthropic(key) as claude:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await claude.messages.create(model="no-such-model", max_tokens=8, messages=HI)
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as bad:
            await claude.messages.create(model=model, max_tokens=8, messages=[])
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        # No credit: a 402 the SDK types, never retried, saying what the balance affords.
        await kyma.admin(
            "AdjustCredits",
            admin_service_pb2.AdjustCreditsRequest(
                account_id=account_id, amount_usd="-0.49", reason="test", actor="t"
            ),
        )
        with pytest.raises(anthropic.APIStatusError) as broke:
            await claude.messages.create(model=model, max_tokens=20_000, messages=HI)
        assert broke.value.status_code == 402
        assert broke.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
        assert "affords max_tokens=" in broke.value.message
        await kyma.admin(
            "SuspendAccount",
            admin_service_pb2.SuspendAccountRequest(
                account_id=account_id,
                until=timestamp_pb2.Timestamp(
                    seconds=int((datetime.now(UTC) + timedelta(days=1)).timestamp())
                ),
                justification=admin_service_pb2.Justification(actor="t", reason="abuse"),
            ),
        )
        await kyma.account_changes_seen()
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            await claude.messages.create(model=model, max_tokens=8, messages=HI)
        assert forbidden.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


async def test_rate_limited_is_a_typed_429(upstream, tmp_path) -> None:
    tiers = [{"tier": 0, "min_purchased_usd": 0, "rpm": 100, "model_rpm": 2, "tpm": 1_000_000}]
    async with running_kyma(tmp_path, None, upstream, "sqlite", tiers=tiers) as limited:
        _, key = await limited.create_account()
        async with limited.anthropic(key) as claude:
            for model in (NATIVE, TRANSLATED):
                for _ in range(2):
                    await claude.messages.create(model=model, max_tokens=4, messages=HI)
                with pytest.raises(anthropic.RateLimitError) as limited_error:
                    await claude.messages.create(model=model, max_tokens=4, messages=HI)
                assert limited_error.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
                assert int(limited_error.value.response.headers["retry-after"]) >= 1
        assert await limited.costs.check(limited) == 4
        await limited.verify_ledger()


async def test_the_key_may_come_as_a_bearer_token(kyma, account) -> None:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/messages?beta=true",
            json={"model": NATIVE, "max_tokens": 4, "messages": HI},
            headers={"authorization": f"Bearer {account[1]}", "anthropic-version": "2023-06-01"},
        )
        assert reply.status_code == 200 and reply.json()["type"] == "message"
        assert reply.headers["request-id"] == reply.headers["x-request-id"]
        bad_json = await http.post(
            "/v1/messages", content=b"{nope", headers={"x-api-key": account[1]}
        )
    assert bad_json.status_code == 400
    assert bad_json.json()["type"] == "error"
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
