"""OpenAI's Responses API through Kyma with the official `openai` SDK, against a deployment that
speaks it natively (passed through) and one that speaks only chat completions (translated):
plain and streamed answers, a function tool round trip, `previous_response_id`, and the stored
responses behind it. Every answer's `usage.cost` is what the ledger charged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest
import pytest_asyncio

from tests.integration.conformance import check_responses, sse_events

pytestmark = pytest.mark.asyncio

NATIVE, TRANSLATED = "native-model", "test-model"
BOTH = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest_asyncio.fixture(autouse=True)
async def _upstream_answers_naturally(_fresh_upstream_and_ledger_check: None, upstream) -> None:
    # Answers that end by themselves (Kyma always sends an output limit, which the test
    # upstream otherwise writes up to).
    await upstream.control(reply_tokens=12)


async def served_by(kyma, model: str) -> None:
    """The upstream path of the last request: native Responses, or translated to chat. For the
    translated model the upstream speaks chat only, so a native call could not have worked."""
    paths = (await kyma.upstream.stats())["requests_by_path"]
    assert paths.get("/v1/responses" if model == NATIVE else "/v1/chat/completions")
    if model == TRANSLATED:
        assert "/v1/responses" not in paths


async def speak_chat_only(kyma, model: str) -> None:
    if model == TRANSLATED:
        await kyma.upstream.control(dialects=["chat"])


def nanos(cost: str) -> int:
    return int(Decimal(cost) * 10**9)


async def charged(kyma, account_id: str, before: int) -> int:
    return before - (await kyma.balance(account_id)).balance_nanos


@BOTH
async def test_create(kyma, account, client: openai.AsyncOpenAI, model: str) -> None:
    await speak_chat_only(kyma, model)
    before = (await kyma.balance(account[0])).balance_nanos
    reply = await client.responses.create(
        model=model, instructions="Be brief.", input="Tell me about rivers."
    )
    assert reply.object == "response" and reply.model == model and reply.status == "completed"
    assert reply.id.startswith("resp_") and reply.output_text
    assert reply.usage is not None and reply.usage.output_tokens == 12
    assert nanos(reply.usage.cost) == await charged(kyma, account[0], before)  # type: ignore[attr-defined]
    await served_by(kyma, model)
    body = (await kyma.upstream.stats())["last_request"]["body"]
    assert body["model"] == "upstream-model"
    if model == NATIVE:
        assert body["store"] is False and body["max_output_tokens"] == 2048
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}


@BOTH
async def test_max_output_tokens_is_held_and_ends_incomplete(
    kyma, client: openai.AsyncOpenAI, model: str
) -> None:
    reply = await client.responses.create(model=model, input="Go on.", max_output_tokens=5)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage is not None and reply.usage.output_tokens == 5


@BOTH
async def test_stream(kyma, account, client: openai.AsyncOpenAI, model: str) -> None:
    await speak_chat_only(kyma, model)
    before = (await kyma.balance(account[0])).balance_nanos
    async with client.responses.stream(model=model, input="Tell me a story.") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.status == "completed" and final.output_text and final.model == model
    assert final.usage is not None
    assert nanos(final.usage.cost) == await charged(kyma, account[0], before)  # type: ignore[attr-defined]
    await served_by(kyma, model)


@BOTH
async def test_function_tool_round_trip(client: openai.AsyncOpenAI, kyma, model: str) -> None:
    await speak_chat_only(kyma, model)
    asked = await client.responses.create(
        model=model, input="Use get_weather for Paris", tools=[WEATHER]
    )
    [call] = [item for item in asked.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in call.arguments
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21°C"}
    answered = await client.responses.create(
        model=model, previous_response_id=asked.id, input=[result], tools=[WEATHER]
    )
    assert answered.status == "completed" and answered.output_text
    assert [item.type for item in answered.output] == ["message"]
    # The upstream saw the whole conversation: the question, the call, its result.
    body = (await kyma.upstream.stats())["last_request"]["body"]
    if model == NATIVE:
        kinds = [item.get("type", "message") for item in body["input"]]
        assert kinds == ["message", "function_call", "function_call_output"]
    else:
        roles = [message["role"] for message in body["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert body["messages"][1]["tool_calls"][0]["id"] == call.call_id


@BOTH
async def test_streamed_tool_call(kyma, account, model: str) -> None:
    async with kyma.http() as http:
        async with http.stream(
            "POST",
            "/v1/responses",
            json={
                "model": model,
                "input": "Use get_weather for Oslo",
                "tools": [WEATHER],
                "reasoning": {"effort": "low"},
                "stream": True,
            },
            headers={"authorization": f"Bearer {account[1]}"},
        ) as response:
            events = await sse_events(response)
    final = check_responses(events)
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call"]
    assert "response.function_call_arguments.delta" in [name for name, _ in events]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 8


@BOTH
async def test_previous_response_id_and_the_store(kyma, client: openai.AsyncOpenAI, model) -> None:
    await speak_chat_only(kyma, model)
    first = await client.responses.create(model=model, input="My name is Ada.")
    second = await client.responses.create(
        model=model, input="What is my name?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    body: dict[str, Any] = (await kyma.upstream.stats())["last_request"]["body"]
    said = body["input"] if model == NATIVE else body["messages"]
    assert [m.get("role") for m in said] == ["user", "assistant", "user"]
    assert "previous_response_id" not in body
    fetched = await client.responses.retrieve(second.id)
    assert fetched.id == second.id and fetched.output_text == second.output_text
    # Another account sees nothing of it.
    _, other_key = await kyma.create_account()
    async with kyma.client(other_key) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(model=model, input="Hi", previous_response_id=second.id)
    # Unstored responses cannot be continued; deleted ones neither, nor what continues them.
    unstored = await client.responses.create(model=model, input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=model, input="Again", previous_response_id=second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(first.id)


async def test_streamed_responses_are_stored_too(kyma, client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model=NATIVE, input="Remember this.") as stream:
        final = await stream.get_final_response()
    fetched = await client.responses.retrieve(final.id)
    assert fetched.output_text == final.output_text and fetched.status == "completed"
    follow = await client.responses.create(
        model=TRANSLATED, input="And now?", previous_response_id=final.id
    )
    assert follow.status == "completed"


async def test_untranslatable_fields_are_refused_by_name(kyma, client: openai.AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ]
    for extra, param in cases:
        body = {"input": "Hi", **extra}
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=TRANSLATED, **body)  # type: ignore[arg-type]
        assert caught.value.param == param, (extra, caught.value.message)
    # Natively they are the upstream's business; Kyma's own refusals hold everywhere.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=NATIVE, input="Hi", background=True)
    assert caught.value.param == "background"


async def test_the_demo_model_speaks_both_dialects_natively(kyma, account, client) -> None:
    reply = await client.responses.create(model="kyma-demo", input="Hi", max_output_tokens=4)
    assert reply.usage is not None and reply.usage.output_tokens == 4 and reply.output_text
    async with kyma.anthropic(account[1]) as claude:
        async with claude.messages.stream(
            model="kyma-demo", max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            message = await stream.get_final_message()
    assert message.usage.output_tokens == 4 and message.stop_reason == "max_tokens"
