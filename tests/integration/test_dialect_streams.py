"""Event-sequence conformance: every kind of Responses and Messages stream Kyma emits — passed
through and translated; text, reasoning and tool calls; cut at the hold; broken by the upstream
— is checked event by event against the order and fields the APIs document (and the official
SDKs' own types and accumulators). A stream the upstream breaks ends with `response.failed` /
an `error` event and is charged for the tokens delivered."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from core_service.logs.query import RequestLogQuery
from tests.integration.conformance import check_messages, check_responses, sse_events

pytestmark = pytest.mark.asyncio

NATIVE, TRANSLATED = "native-model", "test-model"
BOTH = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
TOOL = {
    "name": "get_weather",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest_asyncio.fixture(autouse=True)
async def _upstream_answers_naturally(_fresh_upstream_and_ledger_check: None, upstream) -> None:
    await upstream.control(reply_tokens=12)


async def responses_stream(kyma, key: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    async with kyma.http() as http:
        async with http.stream(
            "POST",
            "/v1/responses",
            json={"stream": True, **body},
            headers={"authorization": f"Bearer {key}"},
        ) as response:
            assert response.status_code == 200, await response.aread()
            return await sse_events(response)


async def messages_stream(kyma, key: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    async with kyma.http() as http:
        async with http.stream(
            "POST",
            "/v1/messages",
            json={"stream": True, "max_tokens": 64, **body},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        ) as response:
            assert response.status_code == 200, await response.aread()
            return await sse_events(response)


async def last_log(kyma, account_id: str) -> Any:
    await kyma.settled()
    await kyma.core.request_log.flush(timeout=30)
    [entry] = await RequestLogQuery(kyma.core.engine).find(account_id=account_id, limit=1)
    return entry


def nanos(cost: str) -> int:
    return int(Decimal(cost) * 10**9)


@BOTH
async def test_responses_text_reasoning_and_tools(kyma, account, model: str) -> None:
    key = account[1]
    plain = check_responses(await responses_stream(kyma, key, model=model, input="Hello"))
    assert plain["status"] == "completed"
    assert [item["type"] for item in plain["output"]] == ["message"]
    thoughtful = check_responses(
        await responses_stream(
            kyma, key, model=model, input="Think first.", reasoning={"effort": "high"}
        )
    )
    assert [item["type"] for item in thoughtful["output"]] == ["reasoning", "message"]
    tools = [{"type": "function", "name": TOOL["name"], "parameters": TOOL["schema"]}]
    calling = check_responses(
        await responses_stream(kyma, key, model=model, input="Use get_weather now", tools=tools)
    )
    assert [item["type"] for item in calling["output"]] == ["function_call"]


@BOTH
async def test_messages_text_thinking_and_tools(kyma, account, model: str) -> None:
    key = account[1]
    hi = [{"role": "user", "content": "Hello"}]
    plain = check_messages(await messages_stream(kyma, key, model=model, messages=hi))
    assert [block.type for block in plain.content] == ["text"]
    assert plain.stop_reason == "end_turn"
    thinking = check_messages(
        await messages_stream(
            kyma,
            key,
            model=model,
            messages=hi,
            thinking={"type": "enabled", "budget_tokens": 1024},
            output_config={"effort": "high"},
        )
    )
    assert [block.type for block in thinking.content] == ["thinking", "text"]
    assert thinking.content[0].thinking
    tools = [{"name": TOOL["name"], "input_schema": TOOL["schema"]}]
    ask = [{"role": "user", "content": "Please call get_weather"}]
    calling = check_messages(
        await messages_stream(kyma, key, model=model, messages=ask, tools=tools)
    )
    assert [block.type for block in calling.content] == ["tool_use"]
    assert calling.stop_reason == "tool_use" and set(calling.content[0].input) == {"city"}


@BOTH
async def test_a_stream_past_its_hold_ends_at_its_limit(kyma, account, model: str) -> None:
    """The upstream writes past the limit it was sent: the client gets exactly what was held,
    and each dialect's own ending for a stream at its limit."""
    account_id, key = account
    await kyma.upstream.control(reply_tokens=None, overrun_tokens=5)
    events = await responses_stream(kyma, key, model=model, input="Go on", max_output_tokens=6)
    final = check_responses(events)
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert len(deltas) == 6 and final["usage"]["output_tokens"] == 6
    assert (await last_log(kyma, account_id)).cost_nanos == nanos(final["usage"]["cost"])

    events = await messages_stream(
        kyma, key, model=model, max_tokens=6, messages=[{"role": "user", "content": "Go on"}]
    )
    message = check_messages(events)
    assert message.stop_reason == "max_tokens"
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert len(deltas) == 6
    [delta] = [data for name, data in events if name == "message_delta"]
    assert delta["usage"]["output_tokens"] == 6
    assert (await last_log(kyma, account_id)).cost_nanos == nanos(delta["usage"]["cost"])


@BOTH
async def test_a_broken_stream_ends_in_the_dialect_and_is_charged_for_what_it_delivered(
    kyma, account, model: str
) -> None:
    account_id, key = account
    await kyma.upstream.control(drop_stream_after=4)
    before = (await kyma.balance(account_id)).balance_nanos
    events = await responses_stream(kyma, key, model=model, input="Tell me everything")
    failed = check_responses(events)
    assert failed["status"] == "failed" and failed["error"]["message"]
    assert [name for name, _ in events].count("response.output_text.delta") == 4
    assert failed["usage"]["output_tokens"] == 4
    logged = await last_log(kyma, account_id)
    # The connection broke: the upstream is taken for unreachable (as for chat streams).
    assert logged.status == "UPSTREAM_UNAVAILABLE" and logged.completion_tokens == 4
    charged = before - (await kyma.balance(account_id)).balance_nanos
    assert charged == logged.cost_nanos == nanos(failed["usage"]["cost"])

    before -= charged
    events = await messages_stream(
        kyma, key, model=model, messages=[{"role": "user", "content": "Tell me everything"}]
    )
    assert check_messages(events) is None
    name, error = events[-1]
    assert name == "error" and error["error"]["type"] == "overloaded_error"
    assert [name for name, _ in events].count("content_block_delta") == 4
    logged = await last_log(kyma, account_id)
    assert logged.completion_tokens == 4
    assert before - (await kyma.balance(account_id)).balance_nanos == logged.cost_nanos
