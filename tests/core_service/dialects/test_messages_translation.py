"""Messages ↔ chat completions: what Claude Code sends translates (system messages, tool
results ahead of the user's words, deferred tools loaded by a tool search, cache hints dropped),
chat answers come back as Anthropic content blocks, and what cannot be translated is refused
by name."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core_service.billing.metering import Charge
from core_service.dialects.messages.from_chat import TranslatedAnswer
from core_service.dialects.messages.request import MessagesCall, read_request
from core_service.dialects.messages.to_chat import to_chat
from core_service.dialects.tally import Tally
from core_service.errors import InvalidRequest, UpstreamError
from core_service.values import TokenUsage

SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}}


def call(**body: Any) -> MessagesCall:
    request = read_request({"model": "m", "max_tokens": 100, **body}, stream=None, betas="")
    state: MessagesCall = request.state
    return state


def test_what_claude_code_sends_translates() -> None:
    chat = to_chat(
        call(
            system=[
                {"type": "text", "text": "You are an agent."},
                {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}},
            ],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "List files.",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
                {"role": "system", "content": [{"type": "text", "text": "Environment: linux"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "Bash",
                            "input": {"command": "ls"},
                        },
                        {
                            "type": "tool_use",
                            "id": "t2",
                            "name": "ToolSearch",
                            "input": {"query": "web"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "a.txt",
                            "is_error": False,
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "tool_reference", "tool_name": "WebFetch"}],
                        },
                        {"type": "text", "text": "Go on."},
                    ],
                },
            ],
            tools=[
                {
                    "name": "Bash",
                    "description": "Run.",
                    "input_schema": SCHEMA,
                    "cache_control": {"type": "ephemeral"},
                },
                {"name": "ToolSearch", "input_schema": SCHEMA},
                {"name": "WebFetch", "input_schema": SCHEMA, "defer_loading": True},
                {"name": "Hidden", "input_schema": SCHEMA, "defer_loading": True},
            ],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            metadata={"user_id": "u-1"},
            thinking={"type": "adaptive", "display": "omitted"},
            context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            output_config={"effort": "high"},
            stop_sequences=["END"],
            temperature=0.5,
        )
    )
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "system", "assistant", "tool", "tool", "user"]
    assert chat["messages"][0]["content"] == "You are an agent.\nBe careful."
    assistant = chat["messages"][3]
    assert assistant["content"] == "Let me look."
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["Bash", "ToolSearch"]
    assert orjson.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}
    assert chat["messages"][4] == {"role": "tool", "tool_call_id": "t1", "content": "a.txt"}
    assert chat["messages"][6] == {"role": "user", "content": "Go on."}
    # The deferred tool a search loaded is offered; the one it did not, not.
    assert [t["function"]["name"] for t in chat["tools"]] == ["Bash", "ToolSearch", "WebFetch"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is False
    assert chat["user"] == "u-1" and chat["reasoning_effort"] == "high"
    assert chat["stop"] == ["END"] and chat["temperature"] == 0.5
    assert chat["max_completion_tokens"] == 100
    assert "cache_control" not in orjson.dumps(chat).decode()


def test_images_become_image_parts() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    chat = to_chat(
        call(messages=[{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}])
    )
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What?"},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
        (
            {"tools": [{"name": "x", "input_schema": {}, "input_examples": []}]},
            "tools.0.input_examples",
        ),
        ({"tool_choice": {"type": "magic"}}, "tool_choice.type"),
        ({"container": "c1"}, "container"),
        ({"mcp_servers": [{"url": "u"}]}, "mcp_servers"),
        (
            {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
            "context_management.edits.0.type",
        ),
        ({"output_config": {"format": {"type": "grammar"}}}, "output_config.format"),
        ({"metadata": {"tenant": "t"}}, "metadata.tenant"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.content.0.type",
        ),
    ],
)
def test_what_cannot_be_translated_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        to_chat(call(**{"messages": [{"role": "user", "content": "Hi"}], **body}))
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
        ),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ],
)
def test_malformed_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        call(**body)
    assert refused.value.param == param


def answer(message: dict[str, Any], finish: str, **body: Any) -> dict[str, Any]:
    completion = {
        "choices": [
            {"message": message, "finish_reason": finish, "stop_reason": body.pop("matched", None)}
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
    translated = TranslatedAnswer(
        completion, call(messages=[{"role": "user", "content": "x"}], **body), "pub"
    )
    assert translated.usage == TokenUsage(20, 5, cached_tokens=8)
    return orjson.loads(translated.render(Charge(TokenUsage(20, 5, cached_tokens=8), 42)))  # type: ignore[no-any-return]


def test_chat_answers_come_back_as_content_blocks() -> None:
    message = answer(
        {
            "role": "assistant",
            "content": "Here.",
            "reasoning_content": "Let me think.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        "tool_calls",
        thinking={"type": "adaptive", "display": "omitted"},
    )
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][0]["thinking"] == ""  # display: omitted
    assert message["content"][2]["input"] == {"command": "ls"}
    assert message["stop_reason"] == "tool_use"
    # Anthropic's input excludes the cached tokens; the cost is the charge.
    assert (
        message["usage"]["input_tokens"] == 12 and message["usage"]["cache_read_input_tokens"] == 8
    )
    assert message["usage"]["cost"] == "0.000000042"
    matched = answer(
        {"role": "assistant", "content": "x"}, "stop", stop_sequences=["END"], matched="END"
    )
    assert (matched["stop_reason"], matched["stop_sequence"]) == ("stop_sequence", "END")
    assert answer({"role": "assistant", "content": "x"}, "length")["stop_reason"] == "max_tokens"
    with pytest.raises(UpstreamError):
        answer(
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
            },
            "tool_calls",
        )


def test_a_tally_cuts_at_the_limit_and_charges_what_it_delivered() -> None:
    tally = Tally(prompt_estimate=7, limit=3)
    assert tally.admit("one two") and not tally.admit("three four")
    assert tally.cut and tally.delivered_tokens == 2
    tally.report(TokenUsage(9, 40, cached_tokens=4))
    assert tally.usage(complete=False) == TokenUsage(9, 2, estimated=True, cached_tokens=4)
    assert tally.usage(complete=True) == TokenUsage(9, 40, cached_tokens=4)
