"""A chat completion as a Responses API `response`: its reasoning (where the upstream gives it,
as `reasoning_content` or `reasoning`) as a reasoning item, its text (or refusal) as a message,
its tool calls as function calls; `finish_reason` as the status (`length` → incomplete for
`max_output_tokens`, `content_filter` → incomplete for `content_filter`); usage in the Responses
shape with its cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.dialects.common import new_id
from core_service.dialects.responses.events import finished, shell
from core_service.dialects.responses.request import ResponsesCall
from core_service.dialects.responses.to_chat import ChatTranslation, chat_name_of
from core_service.errors import UpstreamError
from core_service.inference.usage import usage_from_upstream
from core_service.values import TokenUsage

INCOMPLETE_BY_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


def reasoning_of(message: dict[str, Any]) -> str | None:
    """Where open-model servers put a reasoning model's thoughts."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def output_items(message: dict[str, Any], translation: ChatTranslation) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning is not None:
        items.append(
            {
                "id": new_id("rs"),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
                "status": "completed",
            }
        )
    content, refusal = message.get("content"), message.get("refusal")
    parts: list[dict[str, Any]] = []
    if isinstance(content, str) and content:
        parts.append({"type": "output_text", "text": content, "annotations": [], "logprobs": []})
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        items.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise UpstreamError("The model's upstream sent a malformed tool call.")
        name, namespace = chat_name_of(translation, str(function.get("name")))
        item = {
            "id": new_id("fc"),
            "type": "function_call",
            "call_id": str(call.get("id") or new_id("call")),
            "name": name,
            "arguments": str(function.get("arguments") or ""),
            "status": "completed",
        }
        if namespace is not None:
            item["namespace"] = namespace
        items.append(item)
    return items


@dataclass
class TranslatedAnswer:
    completion: dict[str, Any]
    call: ResponsesCall
    translation: ChatTranslation
    public_model: str
    usage: TokenUsage | None = field(init=False)
    _message: dict[str, Any] = field(init=False)
    _finish: Any = field(init=False)

    def __post_init__(self) -> None:
        self.usage = usage_from_upstream(self.completion.get("usage"))
        choices = self.completion.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise UpstreamError("The model's upstream sent a malformed response.")
        self._message = choice["message"]
        self._finish = choice.get("finish_reason")

    def output_text(self) -> str:
        content = self._message.get("content")
        return content if isinstance(content, str) else ""

    def render(self, charge: Charge) -> bytes:
        response = shell(self.call, self.public_model)
        response["output"] = output_items(self._message, self.translation)
        ended = finished(response, charge, incomplete=INCOMPLETE_BY_FINISH.get(self._finish))
        return orjson.dumps(ended)
