"""A chat completion stream as a Responses API stream (the events of `events.py`).

Chat deltas arrive mixed: reasoning, then text, then tool calls, by the chunk. Each kind opens
its own output item and closes the one before it; tool calls stay open until the stream ends
(their arguments may arrive interleaved by index) and are closed in order. `finish_reason`
decides the terminal event: `length` (or a cut at the held limit) ends with
`response.incomplete` for `max_output_tokens`.
"""

from __future__ import annotations

from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.dialects.chat_relay import ChatStreamTranslation
from core_service.dialects.common import new_id
from core_service.dialects.responses.events import ResponseEvents, shell
from core_service.dialects.responses.from_chat import INCOMPLETE_BY_FINISH
from core_service.dialects.responses.request import ResponsesCall
from core_service.dialects.responses.to_chat import ChatTranslation, chat_name_of
from core_service.dialects.tally import Tally
from core_service.errors import KymaError
from core_service.inference.dialect import Event
from core_service.values import TokenUsage


class TranslatedRelay(ChatStreamTranslation[ResponseEvents]):
    def __init__(
        self, call: ResponsesCall, translation: ChatTranslation, public_model: str, tally: Tally
    ) -> None:
        self._translation = translation
        self._tally = tally
        self._events = ResponseEvents(shell(call, public_model))
        self._started = False
        self._text: int | None = None  # the open message item
        self._reasoning: int | None = None  # the open reasoning item
        self._calls: dict[int, int] = {}  # chat tool call index → output index
        self._finish: Any = None

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> bool:
        """The events of one choice delta; False when the stream is cut."""
        events = self._events
        for key in ("reasoning_content", "reasoning"):
            thought = delta.get(key)
            if isinstance(thought, str) and thought:
                if not self._tally.admit(thought):
                    return False
                if self._reasoning is None:
                    out.extend(self._close(self._text))
                    self._text = None
                    self._reasoning, opened = events.open_text("reasoning")
                    out.extend(opened)
                out.append(events.text_delta(self._reasoning, thought))
                break
        content = delta.get("content")
        if isinstance(content, str) and content:
            if not self._tally.admit(content):
                return False
            if self._text is None:
                out.extend(self._close(self._reasoning))
                self._reasoning = None
                self._text, opened = events.open_text("message")
                out.extend(opened)
            out.append(events.text_delta(self._text, content))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            given = call.get("function")
            function: dict[str, Any] = given if isinstance(given, dict) else {}
            arguments = function.get("arguments")
            name = function.get("name")
            if not self._tally.admit((name or "") + (arguments or "")):
                return False
            position = call.get("index", 0)
            if position not in self._calls:
                out.extend(self._close(self._reasoning) + self._close(self._text))
                self._reasoning = self._text = None
                name, namespace = chat_name_of(self._translation, str(name or ""))
                call_id = str(call.get("id") or new_id("call"))
                self._calls[position], opened = events.open_call(call_id, name, namespace)
                out.extend(opened)
            if isinstance(arguments, str) and arguments:
                out.append(events.arguments_delta(self._calls[position], arguments))
        return True

    def usage(self, *, complete: bool) -> TokenUsage:
        return self._tally.usage(complete=complete)

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        events = [] if self._started else self._events.start()
        incomplete = "max_output_tokens" if cut else INCOMPLETE_BY_FINISH.get(self._finish)
        return events + self._events.end(charge, incomplete=incomplete)

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        return self._events.fail(charge, error.message)

    def logged(self) -> str:
        return orjson.dumps(self._events.response).decode()
