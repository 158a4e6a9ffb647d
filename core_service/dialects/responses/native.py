"""A Responses request passed through to a deployment that speaks the Responses API.

The body goes as the client sent it but for what Kyma owns: `model` (the deployment's name),
`max_output_tokens` (always sent: the client's, or the model's cap the hold covers), `stream`,
and the conversation — Kyma keeps stored responses itself, so the upstream gets the whole
input (a `previous_response_id` expanded) and `store: false`.

Coming back, only what names Kyma's response is rewritten: its id, `model`, `store`,
`previous_response_id`, and the usage, which gains its `cost`. In a stream those are the
lifecycle events (`response.created`, `.in_progress`, the terminal one, which is held back
until the charge is known); every other event goes out as the upstream's bytes, read only to
count the output and to know how to end the stream if it has to be cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.catalog import Deployment, Model
from core_service.dialects.common import json_object, stream_event, upstream_failure
from core_service.dialects.responses.events import TERMINAL, ResponseEvents, shell, usage_object
from core_service.dialects.responses.request import ResponsesCall
from core_service.dialects.tally import Tally
from core_service.errors import KymaError
from core_service.inference.costs import cost_text
from core_service.inference.dialect import Event
from core_service.inference.usage import usage_from_responses
from core_service.values import InferenceRequest, TokenUsage

_LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued"})


def _owned(response: dict[str, Any], call: ResponsesCall, model: str) -> dict[str, Any]:
    """The upstream's response object as Kyma's: its id, the public model, storage as asked."""
    return {
        **response,
        "id": call.response_id,
        "model": model,
        "store": call.store,
        "previous_response_id": call.body.get("previous_response_id"),
    }


def _with_cost(upstream_usage: Any, charge: Charge) -> dict[str, Any]:
    if isinstance(upstream_usage, dict) and not charge.usage.estimated:
        return {**upstream_usage, "cost": cost_text(charge)}
    return usage_object(charge.usage, charge)


def _output_text(response: dict[str, Any]) -> str:
    texts = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "".join(texts)


@dataclass
class NativeAnswer:
    document: dict[str, Any]
    call: ResponsesCall
    public_model: str
    usage: TokenUsage | None = field(init=False)

    def __post_init__(self) -> None:
        self.usage = usage_from_responses(self.document.get("usage"))

    def output_text(self) -> str:
        return _output_text(self.document)

    def render(self, charge: Charge) -> bytes:
        response = _owned(self.document, self.call, self.public_model)
        response["usage"] = _with_cost(self.document.get("usage"), charge)
        return orjson.dumps(response)


class NativeRelay:
    def __init__(self, call: ResponsesCall, public_model: str, tally: Tally) -> None:
        self._call = call
        self._model = public_model
        self._tally = tally
        self._events = ResponseEvents(shell(call, public_model))
        # The upstream's terminal event, held back until the charge is known.
        self._terminal: dict[str, Any] | None = None

    @property
    def cut(self) -> bool:
        return self._tally.cut

    def rewrite_all(self, batch: list[bytes]) -> list[Event]:
        out: list[Event] = []
        for data in batch:
            if self._tally.cut or self._terminal is not None:
                break
            event = stream_event(data)
            kind = str(event.get("type"))
            if kind in ("error", "response.failed"):
                raise upstream_failure(event)
            delta = event.get("delta")
            if kind.endswith(".delta") and isinstance(delta, str) and not self._tally.admit(delta):
                break  # past what was held: cut here
            self._events.follow(event)
            if kind in TERMINAL:
                self._terminal = event
                response = event.get("response")
                if isinstance(response, dict):
                    self._tally.report(usage_from_responses(response.get("usage")))
            elif kind in _LIFECYCLE and isinstance(event.get("response"), dict):
                owned = {**event, "response": _owned(event["response"], self._call, self._model)}
                out.append((kind, orjson.dumps(owned)))
            elif not isinstance(event.get("sequence_number"), int):
                numbered = {**event, "sequence_number": self._events.sequence}
                self._events.sequence += 1
                out.append((kind, orjson.dumps(numbered)))
            else:
                out.append((kind, data))
        return out

    def usage(self, *, complete: bool) -> TokenUsage:
        return self._tally.usage(complete=complete and self._terminal is not None)

    def closing(self, charge: Charge, *, cut: bool) -> list[Event]:
        terminal = self._terminal
        if cut or terminal is None or not isinstance(terminal.get("response"), dict):
            return self._events.end(charge, incomplete="max_output_tokens" if cut else None)
        upstream = terminal["response"]
        response = _owned(upstream, self._call, self._model)
        response["usage"] = _with_cost(upstream.get("usage"), charge)
        self._events.response = response
        kind = str(terminal["type"])
        return [(kind, orjson.dumps({**terminal, "response": response}))]

    def failed(self, charge: Charge, error: KymaError) -> list[Event]:
        return self._events.fail(charge, error.message)

    def logged(self) -> str:
        return orjson.dumps(self._events.response).decode()


@dataclass
class NativeExchange:
    request: InferenceRequest
    deployment: Deployment
    model: Model
    path: str = "responses"
    body: bytes = field(init=False)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        call: ResponsesCall = self.request.state
        sent = dict(call.body)
        sent["model"] = self.deployment.model
        sent["max_output_tokens"] = self.request.max_output_tokens or self.model.max_output_tokens
        sent["stream"] = self.request.stream
        sent["store"] = False
        if sent.pop("previous_response_id", None) is not None:
            sent["input"] = call.items
        self.body = orjson.dumps(sent)

    def answer(self, raw: bytes) -> NativeAnswer:
        return NativeAnswer(json_object(raw), self.request.state, self.model.name)

    def relay(self) -> NativeRelay:
        request = self.request
        tally = Tally(
            prompt_estimate=request.prompt_tokens_estimate,
            limit=request.max_output_tokens or self.model.max_output_tokens,
        )
        return NativeRelay(request.state, self.model.name, tally)
