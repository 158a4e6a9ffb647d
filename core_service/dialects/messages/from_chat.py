"""A chat completion as an Anthropic `message`: reasoning (where the upstream gives it) as a
thinking block (its text hidden when the request asked `display: "omitted"`), text as a text
block, tool calls as `tool_use` blocks; `finish_reason` as `stop_reason` (`stop` → `end_turn`,
or `stop_sequence` when the upstream says which stop sequence matched; `length` →
`max_tokens`; `tool_calls` → `tool_use`; `content_filter` → `refusal`); usage in Anthropic's
shape (input excludes cached tokens) with its cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.dialects.common import new_id
from core_service.dialects.messages.events import usage_object
from core_service.dialects.messages.request import MessagesCall
from core_service.dialects.responses.from_chat import reasoning_of
from core_service.errors import UpstreamError
from core_service.inference.usage import usage_from_upstream
from core_service.values import TokenUsage

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_of(finish: Any, matched: Any, call: MessagesCall) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for a chat finish. Servers like vLLM say
    which stop string matched (`stop_reason`); OpenAI's do not, and that reads as end_turn."""
    stops = call.body.get("stop_sequences") or []
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn"), None


def tool_input(arguments: Any) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise UpstreamError("The model wrote tool-call arguments that are not JSON.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError("The model wrote tool-call arguments that are not a JSON object.")
    return parsed


@dataclass
class TranslatedAnswer:
    completion: dict[str, Any]
    call: MessagesCall
    public_model: str
    usage: TokenUsage | None = field(init=False)
    _choice: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.usage = usage_from_upstream(self.completion.get("usage"))
        choices = self.completion.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise UpstreamError("The model's upstream sent a malformed response.")
        self._choice = choice

    def output_text(self) -> str:
        content = self._choice["message"].get("content")
        return content if isinstance(content, str) else ""

    def render(self, charge: Charge) -> bytes:
        message = self._choice["message"]
        blocks: list[dict[str, Any]] = []
        reasoning = reasoning_of(message)
        if reasoning is not None:
            shown = reasoning if self.call.thinking_shown else ""
            blocks.append({"type": "thinking", "thinking": shown, "signature": ""})
        if isinstance(message.get("content"), str) and message["content"]:
            blocks.append({"type": "text", "text": message["content"]})
        for tool_call in message.get("tool_calls") or []:
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            if not isinstance(function, dict):
                raise UpstreamError("The model's upstream sent a malformed tool call.")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": str(tool_call.get("id") or new_id("toolu")),
                    "name": str(function.get("name")),
                    "input": tool_input(function.get("arguments")),
                }
            )
        stop_reason, stop_sequence = stop_of(
            self._choice.get("finish_reason"), self._choice.get("stop_reason"), self.call
        )
        return orjson.dumps(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": self.public_model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": usage_object(charge.usage, charge),
            }
        )
