"""Reading an Anthropic Messages request: the shape of the fields Kyma knows (a 400 naming the
field), and what policy needs (model, `max_tokens`, a prompt estimate). Block types Kyma does
not know pass unchecked to a deployment that speaks Messages natively; translation to chat
completions refuses them (`to_chat`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service import tokens
from core_service.errors import InvalidRequest
from core_service.inference.requests import request_body
from core_service.values import InferenceRequest

_ROLES = ("user", "assistant", "system")


@dataclass
class MessagesCall:
    body: dict[str, Any]
    # Anthropic's beta flags the client sent (`anthropic-beta`), for a native upstream.
    betas: str = ""
    counting: bool = False
    thinking_shown: bool = field(init=False)

    def __post_init__(self) -> None:
        thinking = self.body.get("thinking")
        self.thinking_shown = not (
            isinstance(thinking, dict) and thinking.get("display") == "omitted"
        )


def _wrong(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: Input should be {expected}", param=param)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return " ".join(_block_text(part) for part in content)
        return str(content or "")
    if kind in ("thinking", "redacted_thinking"):
        return ""
    if kind == "image":
        return ""
    return orjson.dumps(block).decode()


def _check_blocks(content: Any, param: str) -> list[Any]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _wrong(param, "a valid string or a list of content blocks")
    for index, block in enumerate(content):
        where = f"{param}.{index}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _wrong(where, "an object with a 'type'")
        kind = block["type"]
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _wrong(f"{where}.text", "a valid string")
        if kind == "tool_use" and (
            not isinstance(block.get("id"), str)
            or not isinstance(block.get("name"), str)
            or not isinstance(block.get("input"), dict)
        ):
            raise _wrong(where, "a tool_use block with an id, a name and an input object")
        if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
            raise _wrong(f"{where}.tool_use_id", "a valid string")
    return content


def parse_body(raw: bytes) -> dict[str, Any]:
    return request_body(raw, missing_model="model: Field required")


def estimate_prompt(body: Mapping[str, Any]) -> int:
    """Kyma's count of the prompt: system, every block, and the tools' definitions."""
    total = tokens.REPLY_OVERHEAD_TOKENS
    system = body.get("system")
    if isinstance(system, str):
        total += tokens.MESSAGE_OVERHEAD_TOKENS + tokens.count_tokens(system)
    elif isinstance(system, list):
        for block in system:
            total += tokens.count_tokens(_block_text(block))
    for message in body.get("messages") or []:
        total += tokens.MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, dict) else None
        for block in [content] if isinstance(content, str) else content or []:
            text = _block_text(block)
            total += tokens.count_tokens(text) if text else 85  # an image, as OpenAI counts one
    if body.get("tools"):
        total += tokens.count_tokens(orjson.dumps(body["tools"]).decode())
    return total


def read_request(
    body: dict[str, Any], *, stream: bool | None, betas: str, counting: bool = False
) -> InferenceRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _wrong("messages", "a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _wrong(f"messages.{index}", "an object")
        if message.get("role") not in _ROLES:
            raise InvalidRequest(
                f"messages.{index}.role: Input should be 'user' or 'assistant'",
                param=f"messages.{index}.role",
            )
        _check_blocks(message.get("content"), f"messages.{index}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check_blocks(system, "system")
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)
    ):
        raise _wrong("tools", "a list of tools")
    limit = body.get("max_tokens")
    if not counting:
        if limit is None:
            raise InvalidRequest("max_tokens: Field required", param="max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest(
                "max_tokens: Input should be a positive integer", param="max_tokens"
            )
    wants_stream = body.get("stream", False)
    if not isinstance(wants_stream, bool):
        raise _wrong("stream", "a valid boolean")
    return InferenceRequest(
        endpoint="messages.count_tokens" if counting else "messages",
        body=body,
        model=body["model"],
        stream=False if counting else (wants_stream if stream is None else stream),
        max_output_tokens=None if counting else limit,
        prompt_tokens_estimate=estimate_prompt(body),
        include_usage=True,
        state=MessagesCall(body, betas=betas, counting=counting),
    )
