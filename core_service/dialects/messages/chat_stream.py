"""A chat completion stream as an Anthropic Messages stream (the events of `events.py`).

Reasoning, text and tool calls each open their own content block and close the one before;
tool calls stay open until the stream ends (their arguments may arrive interleaved by index)
and are closed in order. `message_start` carries Kyma's estimate of the input (a chat stream
reports its usage only at the end); the final `message_delta` carries the usage as billed,
with its cost. A cut at the held limit ends with `stop_reason: "max_tokens"`.
"""

from __future__ import annotations

from typing import Any

from core_service.billing.metering import Charge
from core_service.dialects.chat_relay import ChatStreamTranslation
from core_service.dialects.common import new_id
from core_service.dialects.messages.events import MessageEvents, error_event
from core_service.dialects.messages.from_chat import stop_of
from core_service.dialects.messages.request import MessagesCall
from core_service.dialects.tally import Tally
from core_service.errors import KymaError
from core_service.inference.dialect import Event
from core_service.values import TokenUsage


class TranslatedRelay(ChatStreamTranslation[MessageEvents]):
    def __init__(self, call: MessagesCall, public_model: str, tally: Tally, estimate: int) -> None:
        self._call = call
        self._tally = tally
        self._events = MessageEvents(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": public_model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": estimate, "output_tokens": 0},
            }
        )
        self._started = False
        self._text: int | None = None
        self._thinking: int | None = None
        self._calls: dict[int, int] = {}
        self._finish: Any = None
        self._matched: Any = None

    def _open(self, block: dict[str, Any], out: list[Event]) -> int:
        index, started = self._events.open_block(block)
        out.append(started)
        return index

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> bool:
        events = self._events
        for key in ("reasoning_content", "reasoning"):
            thought = delta.get(key)
            if isinstance(thought, str) and thought:
                if not self._tally.admit(thought):
                    return False
                if self._thinking is None:
                    out.extend(self._close(self._text))
                    self._text = None
                    thinking = {"type": "thinking", "thinking": "", "signature": ""}
                    self._thinking = self._open(thinking, out)
                if self._call.thinking_shown:
                    out.append(events.delta(self._thinking, thought))
                break
        content = delta.get("content")
        if isinstance(content, str) and content:
            if not self._tally.admit(content):
                return False
            if self._text is None:
                out.extend(self._close(self._thinking))
                self._thinking = None
                self._text = self._open({"type": "text", "text": ""}, out)
            out.append(events.delta(self._text, content))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            given = call.get("function")
            function: dict[str, Any] = given if isinstance(given, dict) else {}
            arguments, name = function.get("arguments"), function.get("name")
            if not self._tally.admit((name or "") + (arguments or "")):
                return False
            position = call.get("index", 0)
            if position not in self._calls:
                out.extend(self._close(self._thinking) + self._close(self._text))
                self._thinking = self._text = None
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": str(call.get("id") or new_id("toolu")),
                    "name": str(name or ""),
                    "input": {},
                }
                self._calls[position] = self._open(block, out)
            if isinstance(arguments, str) and arguments:
                out.append(events.delta(self._calls[position], arguments))
        return True

    def _finished(self, choice: dict[str, Any]) -> None:
        self._finish = choice["finish_reason"]
        self._matched = choice.get("stop_reason")

    def usage(self, *, complete: bool) -> TokenUsage:
        return self._tally.usage(complete=complete)

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        events = [] if self._started else self._events.start()
        if cut:
            stop_reason, stop_sequence = "max_tokens", None
        else:
            stop_reason, stop_sequence = stop_of(self._finish, self._matched, self._call)
        return events + self._events.end(
            charge, stop_reason=stop_reason, stop_sequence=stop_sequence
        )

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        return [error_event(error)]

    def logged(self) -> str:
        return self._events.logged()
