"""Responses ↔ chat completions: what Codex sends translates, namespaced tools come back under
their own names, and every field that cannot be translated is refused by name."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core_service.billing.metering import Charge
from core_service.dialects.responses.from_chat import TranslatedAnswer
from core_service.dialects.responses.request import ResponsesCall, read_request
from core_service.dialects.responses.to_chat import to_chat
from core_service.errors import InvalidRequest, UpstreamError
from core_service.values import TokenUsage

FUNCTION = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
NAMESPACE = {"type": "namespace", "name": "agents", "tools": [{**FUNCTION, "name": "spawn"}]}


def call(**body: Any) -> ResponsesCall:
    request = read_request(
        {"model": "m", **body}, stream=None, response_id="resp_x", created_at=0, previous=None
    )
    state: ResponsesCall = request.state
    return state


def test_what_codex_sends_translates() -> None:
    translated = to_chat(
        call(
            input=[
                {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "Rules."}],
                },
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Fix it."}],
                },
                {"type": "reasoning", "summary": [], "encrypted_content": None},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "exec_command",
                    "arguments": "{}",
                },
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "namespace": "agents",
                    "name": "spawn",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "done"}],
                },
            ],
            tools=[FUNCTION, NAMESPACE],
            tool_choice="auto",
            parallel_tool_calls=True,
            reasoning={"effort": "medium", "summary": "auto"},
            store=False,
            include=["reasoning.encrypted_content"],
            prompt_cache_key="session-1",
            client_metadata={"x-codex-window-id": "w"},
            text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        ),
        max_output_tokens=None,
    )
    body = translated.body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    assert body["messages"][0]["content"] == "Rules."
    calls = body["messages"][2]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["exec_command", "agents__spawn"]
    assert body["messages"][4] == {"role": "tool", "tool_call_id": "c2", "content": "done"}
    assert [t["function"]["name"] for t in body["tools"]] == ["exec_command", "agents__spawn"]
    assert body["reasoning_effort"] == "medium" and body["prompt_cache_key"] == "session-1"
    assert body["response_format"]["json_schema"]["name"] == "out"
    assert "store" not in body and "include" not in body and "client_metadata" not in body
    # A namespaced call comes back under its own name, in its namespace.
    completion = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "Thinking.",
                    "tool_calls": [
                        {
                            "id": "c3",
                            "type": "function",
                            "function": {"name": "agents__spawn", "arguments": "{}"},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    answer = TranslatedAnswer(completion, call(input="x"), translated, "public")
    assert answer.usage == TokenUsage(10, 4, reasoning_tokens=2)
    response = orjson.loads(answer.render(Charge(TokenUsage(10, 4, reasoning_tokens=2), 1500)))
    reasoning, function_call = response["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert function_call["name"] == "spawn" and function_call["namespace"] == "agents"
    assert response["usage"]["cost"] == "0.000001500" and response["status"] == "completed"
    assert response["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search", "external_web_access": False}]}, "tools[0].type"),
        (
            {"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
        ({"reasoning": {"effort": "low", "budget": 3}}, "reasoning.budget"),
        ({"moderation": {"model": "x"}}, "moderation"),
        ({"input": [{"type": "computer_call", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "u"}],
                    }
                ]
            },
            "input[0].output[0].type",
        ),
    ],
)
def test_what_cannot_be_translated_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        to_chat(call(**{"input": "Hi", **body}), max_output_tokens=None)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "instructions": ["no"]}, "instructions"),
    ],
)
def test_malformed_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        call(**body)
    assert refused.value.param == param


def test_a_malformed_upstream_reply_is_the_upstreams_fault() -> None:
    translated = to_chat(call(input="x"), max_output_tokens=None)
    with pytest.raises(UpstreamError):
        TranslatedAnswer({"choices": []}, call(input="x"), translated, "public")
