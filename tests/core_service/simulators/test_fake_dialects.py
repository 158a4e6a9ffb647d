"""The fake model's Responses and Messages dialects: shapes as the official SDKs type them, event
streams as the SDKs' own accumulators read them, tools, reasoning and the prompt cache."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from core_service.simulators.fake_model import messages, responses
from core_service.simulators.fake_model.model import FakeModel
from core_service.simulators.test_upstream.server import UpstreamConfig, build_app

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def responses_request(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": "Tell me about rivers.", **extra}


def messages_request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Tell me about rivers."}],
        **extra,
    }


def replay_responses(events: list[dict[str, Any]]) -> Response:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=openai.omit)
    for number, event in enumerate(events):
        assert event["sequence_number"] == number
        parsed = construct_type_unchecked(value=event, type_=ResponseStreamEvent)  # type: ignore[arg-type]
        state.handle_event(parsed)
    assert state._completed_response is not None
    return state._completed_response


def replay_messages(events: list[dict[str, Any]]) -> Any:
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in events:
        if event["type"] == "ping":
            continue
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    return snapshot


def test_response_object_and_stream_agree() -> None:
    fake = FakeModel()
    body = responses.response(fake, responses_request(max_output_tokens=12), model="pub")
    parsed = Response.model_validate(body)
    assert parsed.status == "incomplete" and parsed.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert parsed.usage is not None and parsed.usage.output_tokens == 12
    events = list(responses.response_events(fake, responses_request(), model="pub"))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    final = replay_responses(events)
    assert final.output_text and final.usage is not None
    assert final.usage.output_tokens == 16


def test_response_tool_call_reasoning_and_cache() -> None:
    fake = FakeModel()
    request = responses_request(
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Use get_weather for Paris"},
        ],
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
        reasoning={"effort": "low"},
    )
    final = replay_responses(list(responses.response_events(fake, request, model="pub")))
    kinds = [item.type for item in final.output]
    assert kinds == ["reasoning", "function_call"]
    call = final.output[1]
    assert call.name == "get_weather" and '"city"' in call.arguments  # type: ignore[union-attr]
    assert final.usage.output_tokens_details.reasoning_tokens == 8  # type: ignore[union-attr]
    assert final.usage.input_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    # The tool's result: the model answers, and the earlier turns come from the cache.
    request["input"] += [
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "get_weather",
            "arguments": "{}",
        },  # type: ignore[union-attr]
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},  # type: ignore[union-attr]
    ]
    again = Response.model_validate(responses.response(fake, request, model="pub"))
    assert [item.type for item in again.output] == ["reasoning", "message"]
    assert again.usage.input_tokens_details.cached_tokens > 0  # type: ignore[union-attr]


def test_message_object_and_stream_agree() -> None:
    fake = FakeModel()
    parsed = Message.model_validate(messages.message(fake, messages_request(), model="pub"))
    assert parsed.stop_reason == "max_tokens" and parsed.usage.output_tokens == 64
    snapshot = replay_messages(list(messages.message_events(fake, messages_request(), model="pub")))
    assert snapshot.stop_reason == "max_tokens" and snapshot.usage.output_tokens == 64
    assert snapshot.content[0].type == "text" and snapshot.content[0].text


def test_message_tool_use_thinking_and_cache_breakpoints() -> None:
    fake = FakeModel()
    request = messages_request(
        system=[
            {"type": "text", "text": "Be brief and kind.", "cache_control": {"type": "ephemeral"}}
        ],
        messages=[{"role": "user", "content": "Call get_weather please"}],
        tools=[{"name": "get_weather", "input_schema": WEATHER}],
        thinking={"type": "adaptive"},
    )
    snapshot = replay_messages(list(messages.message_events(fake, request, model="pub")))
    assert [block.type for block in snapshot.content] == ["thinking", "tool_use"]
    assert snapshot.content[1].input == {"city": snapshot.content[1].input["city"]}
    assert snapshot.stop_reason == "tool_use"
    written = snapshot.usage.cache_creation_input_tokens
    assert written > 0 and snapshot.usage.cache_read_input_tokens == 0
    again = Message.model_validate(messages.message(fake, request, model="pub"))
    assert again.usage.cache_read_input_tokens == written
    assert again.usage.cache_creation_input_tokens == 0
    counted = messages.count(fake, request, model="pub")["input_tokens"]
    assert counted == again.usage.input_tokens + written


def test_display_omitted_hides_the_thinking_text() -> None:
    request = messages_request(thinking={"type": "adaptive", "display": "omitted"})
    body = messages.message(FakeModel(), request, model="pub")
    assert body["content"][0] == {
        "type": "thinking",
        "thinking": "",
        "signature": body["content"][0]["signature"],
    }


async def test_the_test_upstream_serves_the_sdks_and_narrows_its_dialects() -> None:
    app = build_app(UpstreamConfig(seed=0))
    transport = httpx.ASGITransport(app=app)
    async with openai.AsyncOpenAI(
        base_url="http://upstream/v1",
        api_key="k",
        http_client=httpx.AsyncClient(transport=transport),
        max_retries=0,
    ) as sdk:
        async with sdk.responses.stream(model="m", input="Hello") as stream:
            final = await stream.get_final_response()
        assert final.status == "completed" and final.usage.output_tokens == 16  # type: ignore[union-attr]
        app.config = app.config.updated({"dialects": ["chat"]})
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.create(model="m", input="Hello")
    app.config = app.config.updated({"dialects": ["messages"]})
    async with anthropic.AsyncAnthropic(
        base_url="http://upstream",
        api_key="k",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        max_retries=0,
    ) as claude:
        async with claude.messages.stream(
            model="m", max_tokens=7, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            message = await stream.get_final_message()
        assert message.usage.output_tokens == 7 and message.stop_reason == "max_tokens"
        counted = await claude.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "Hi"}]
        )
        assert counted.input_tokens > 0
        with pytest.raises(anthropic.BadRequestError):
            await claude.messages.create(model="m", max_tokens=0, messages=[])  # type: ignore[arg-type]
