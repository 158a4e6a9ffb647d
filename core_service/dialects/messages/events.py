"""Anthropic's Messages stream as Anthropic sends it, written or followed event by event:

    message_start (the message, empty, with the input usage), ping
    per content block, in order: content_block_start, content_block_delta…, content_block_stop
        (text: text_delta; thinking: thinking_delta; tool_use: input_json_delta)
    message_delta (stop_reason, stop_sequence, and the final usage — with its cost)
    message_stop

A stream the upstream breaks ends with an `error` event. `MessageEvents` keeps the message as
it stands (its blocks, their text so far): what a stream cut at its limit is closed with, and
what the request log keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.errors import KymaError
from core_service.inference.costs import cost_text
from core_service.inference.dialect import Event
from core_service.values import TokenUsage
from kyma.contract.v1.constants import ErrorReason

# Anthropic's error type for what can break a stream.
_ERROR_TYPES = {
    ErrorReason.UPSTREAM_UNAVAILABLE: "overloaded_error",
    ErrorReason.UPSTREAM_TIMEOUT: "timeout_error",
}
_DELTAS = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


def usage_object(usage: TokenUsage, charge: Charge) -> dict[str, Any]:
    """Usage in Anthropic's shape (input excludes the cache's tokens), with its cost."""
    report: dict[str, Any] = {
        "input_tokens": usage.uncached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }
    if usage.reasoning_tokens:
        report["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    report["cost"] = cost_text(charge)
    if usage.estimated:
        report["estimated"] = True
    return report


def with_cost(upstream_usage: Any, charge: Charge) -> dict[str, Any]:
    """The upstream's usage where it was believed, else Kyma's; with the charge's cost."""
    if isinstance(upstream_usage, dict) and not charge.usage.estimated:
        return {**upstream_usage, "cost": cost_text(charge)}
    return usage_object(charge.usage, charge)


def error_event(error: KymaError) -> Event:
    kind = _ERROR_TYPES.get(error.reason, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": error.message}}
    return "error", orjson.dumps(body)


def event(kind: str, **fields: Any) -> Event:
    return kind, orjson.dumps({"type": kind, **fields})


@dataclass
class _Block:
    kind: str
    parts: list[str] = field(default_factory=list)


class MessageEvents:
    def __init__(self, message: dict[str, Any]) -> None:
        # The message as it stands: `content` holds finished blocks and open ones' starts.
        self.message = message
        self.blocks: list[dict[str, Any]] = []
        message["content"] = self.blocks
        self._open: dict[int, _Block] = {}

    # --- writing -------------------------------------------------------------------------

    def start(self) -> list[Event]:
        return [event("message_start", message=self.message), event("ping")]

    def open_block(self, block: dict[str, Any]) -> tuple[int, Event]:
        index = len(self.blocks)
        self.blocks.append(dict(block))
        self._open[index] = _Block(str(block["type"]))
        return index, event("content_block_start", index=index, content_block=block)

    def delta(self, index: int, text: str) -> Event:
        block = self._open[index]
        block.parts.append(text)
        kind = _DELTAS[block.kind]
        return event(
            "content_block_delta", index=index, delta={"type": kind, _DELTA_FIELDS[kind]: text}
        )

    def close(self, index: int) -> list[Event]:
        block = self._open.pop(index, None)
        if block is None:
            return []
        self._finish(index, block)
        return [event("content_block_stop", index=index)]

    def close_all(self) -> list[Event]:
        events: list[Event] = []
        for index in sorted(self._open):
            events.extend(self.close(index))
        return events

    def end(
        self,
        charge: Charge,
        *,
        stop_reason: str,
        stop_sequence: str | None = None,
        upstream_usage: Any = None,
    ) -> list[Event]:
        """Close what is open, then message_delta (with usage and cost) and message_stop."""
        events = self.close_all()
        usage = with_cost(upstream_usage, charge)
        self.message.update(stop_reason=stop_reason, stop_sequence=stop_sequence, usage=usage)
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        events.append(event("message_delta", delta=delta, usage=usage))
        events.append(event("message_stop"))
        return events

    # --- following a native stream -----------------------------------------------------------

    def follow(self, kind: str, data: Mapping[str, Any]) -> None:
        index = data.get("index")
        if kind == "content_block_start" and isinstance(index, int):
            block = data.get("content_block")
            block = dict(block) if isinstance(block, dict) else {"type": "text"}
            while len(self.blocks) <= index:
                self.blocks.append({})
            self.blocks[index] = block
            self._open[index] = _Block(str(block.get("type")))
        elif kind == "content_block_delta" and isinstance(index, int) and index in self._open:
            delta = data.get("delta")
            if isinstance(delta, dict):
                name = _DELTA_FIELDS.get(str(delta.get("type")))
                text = delta.get(name) if name else None
                if isinstance(text, str):
                    self._open[index].parts.append(text)
                elif delta.get("type") == "signature_delta":
                    self.blocks[index]["signature"] = delta.get("signature")
        elif kind == "content_block_stop" and isinstance(index, int) and index in self._open:
            self._finish(index, self._open.pop(index))

    def _finish(self, index: int, block: _Block) -> None:
        text = "".join(block.parts)
        target = self.blocks[index]
        if block.kind == "tool_use":
            try:
                target["input"] = orjson.loads(text) if text else target.get("input", {})
            except orjson.JSONDecodeError:
                target["input"] = {"_partial_json": text}
        elif block.kind in ("text", "thinking"):
            target[block.kind] = text

    def logged(self) -> str:
        for index, block in list(self._open.items()):
            self._finish(index, block)
        return orjson.dumps(self.message).decode()
