"""A Messages request passed through to a deployment that speaks Anthropic's Messages API.

The body goes as the client sent it but for `model` (the deployment's name) and `stream`; the
client's `max_tokens` is what was held for. Anthropic's version header goes with it, and the
client's beta flags (`anthropic-beta`), which unlock fields such as `context_management`.
`cache_control` hints pass through untouched.

Coming back, `model` shows the public name and the usage gains its `cost`. In a stream,
`message_start` is rewritten (its model); `message_delta` and `message_stop` are held back
until the charge is known; every other event goes out as the upstream's bytes, read only to
count the output and to know how to end the stream if it has to be cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.catalog import Deployment, Model
from core_service.dialects.common import json_object, stream_event, upstream_failure
from core_service.dialects.messages.events import MessageEvents, error_event, event, with_cost
from core_service.dialects.messages.request import MessagesCall
from core_service.dialects.tally import Tally
from core_service.errors import KymaError
from core_service.inference.dialect import Event
from core_service.inference.usage import usage_from_messages
from core_service.values import InferenceRequest, TokenUsage

ANTHROPIC_VERSION = "2023-06-01"
_COUNTED_DELTAS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


def native_headers(call: MessagesCall) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if call.betas:
        headers["anthropic-beta"] = call.betas
    return headers


def _text_of(message: dict[str, Any]) -> str:
    return "".join(
        str(block.get("text") or "")
        for block in message.get("content") or []
        if isinstance(block, dict) and block.get("type") == "text"
    )


@dataclass
class NativeAnswer:
    document: dict[str, Any]
    public_model: str
    usage: TokenUsage | None = field(init=False)

    def __post_init__(self) -> None:
        self.usage = usage_from_messages(self.document.get("usage"))

    def output_text(self) -> str:
        return _text_of(self.document)

    def render(self, charge: Charge) -> bytes:
        message = {**self.document, "model": self.public_model}
        message["usage"] = with_cost(self.document.get("usage"), charge)
        return orjson.dumps(message)


@dataclass
class CountAnswer:
    """count_tokens' reply, as the upstream gave it (it costs nothing)."""

    document: dict[str, Any]
    usage: TokenUsage | None = None

    def output_text(self) -> str:
        return ""

    def render(self, charge: Charge) -> bytes:
        return orjson.dumps(self.document)


class NativeRelay:
    def __init__(self, public_model: str, tally: Tally) -> None:
        self._model = public_model
        self._tally = tally
        self._events = MessageEvents({"type": "message", "role": "assistant"})
        self._start_usage: dict[str, Any] = {}
        # message_delta and message_stop, held back until the charge is known.
        self._delta: dict[str, Any] | None = None
        self._stopped = False

    @property
    def cut(self) -> bool:
        return self._tally.cut

    def rewrite_all(self, batch: list[bytes]) -> list[Event]:
        out: list[Event] = []
        for data in batch:
            if self._tally.cut or self._stopped:
                break
            parsed = stream_event(data)
            kind = str(parsed.get("type"))
            if kind == "error":
                raise upstream_failure(parsed)
            if kind == "content_block_delta":
                delta = parsed.get("delta")
                name = (
                    _COUNTED_DELTAS.get(str(delta.get("type"))) if isinstance(delta, dict) else None
                )
                text = delta.get(name) if name and isinstance(delta, dict) else None
                if isinstance(text, str) and not self._tally.admit(text):
                    break  # past what was held: cut here
            if kind == "message_start" and isinstance(parsed.get("message"), dict):
                message = {**parsed["message"], "model": self._model}
                self._events.message.update({k: v for k, v in message.items() if k != "content"})
                usage = message.get("usage")
                self._start_usage = dict(usage) if isinstance(usage, dict) else {}
                self._tally.report(usage_from_messages({**self._start_usage, "output_tokens": 0}))
                out.append((kind, orjson.dumps({**parsed, "message": message})))
                continue
            self._events.follow(kind, parsed)
            if kind == "message_delta":
                self._delta = parsed
                usage = parsed.get("usage")
                if isinstance(usage, dict):
                    # Usage on message_delta is cumulative; what it omits, message_start said.
                    self._tally.report(usage_from_messages({**self._start_usage, **usage}))
            elif kind == "message_stop":
                self._stopped = True
            else:
                out.append((kind, data))
        return out

    def usage(self, *, complete: bool) -> TokenUsage:
        return self._tally.usage(complete=complete and self._delta is not None)

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        delta = self._delta
        if cut or delta is None:
            return self._events.end(charge, stop_reason="max_tokens" if cut else "end_turn")
        upstream_usage = delta.get("usage")
        merged = (
            {**self._start_usage, **upstream_usage} if isinstance(upstream_usage, dict) else None
        )
        usage = with_cost(merged, charge)
        given = delta.get("delta")
        stop: dict[str, Any] = given if isinstance(given, dict) else {}
        self._events.message.update(
            stop_reason=stop.get("stop_reason"),
            stop_sequence=stop.get("stop_sequence"),
            usage=usage,
        )
        return [
            ("message_delta", orjson.dumps({**delta, "usage": usage})),
            event("message_stop"),
        ]

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        return [error_event(error)]

    def logged(self) -> str:
        return self._events.logged()


@dataclass
class NativeExchange:
    request: InferenceRequest
    deployment: Deployment
    model: Model
    path: str = field(init=False)
    body: bytes = field(init=False)
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        call: MessagesCall = self.request.state
        sent = dict(call.body)
        sent["model"] = self.deployment.model
        if call.counting:
            self.path = "messages/count_tokens"
            sent.pop("stream", None)
        else:
            self.path = "messages"
            sent["stream"] = self.request.stream
        self.body = orjson.dumps(sent)
        self.headers = native_headers(call)

    def answer(self, raw: bytes) -> NativeAnswer | CountAnswer:
        if self.request.state.counting:
            return CountAnswer(json_object(raw))
        return NativeAnswer(json_object(raw), self.model.name)

    def relay(self) -> NativeRelay:
        tally = Tally(
            prompt_estimate=self.request.prompt_tokens_estimate,
            limit=self.request.max_output_tokens,
        )
        return NativeRelay(self.model.name, tally)
