"""The Responses API's stream as OpenAI sends it, written or followed event by event.

Order (every event numbered by `sequence_number`, from 0):

    response.created, response.in_progress
    per output item, one at a time:
        response.output_item.added
        message / reasoning: response.content_part.added,
            response.output_text.delta… (reasoning: response.reasoning_text.delta…),
            response.output_text.done, response.content_part.done
        function call: response.function_call_arguments.delta…,
            response.function_call_arguments.done
        response.output_item.done
    response.completed (or response.incomplete; response.failed when the upstream broke)

`ResponseEvents` keeps the response as it stands (its output items, their text so far), which
is what a stream ended early is closed with, what the terminal event carries, and what is
stored. A translated stream is written through it; a native one is followed by it
(`follow`), so that Kyma can still end it properly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core_service.billing.metering import Charge
from core_service.dialects.common import new_id
from core_service.dialects.responses.request import ResponsesCall
from core_service.inference.costs import cost_text
from core_service.inference.dialect import Event
from core_service.values import TokenUsage

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def shell(call: ResponsesCall, model: str) -> dict[str, Any]:
    """The response object before any output: what the request asked for, echoed."""
    body = call.body
    asked = body.get("reasoning")
    reasoning: dict[str, Any] = asked if isinstance(asked, dict) else {}
    return {
        "id": call.response_id,
        "object": "response",
        "created_at": call.created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": body.get("service_tier") or "default",
        "store": call.store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def usage_object(usage: TokenUsage, charge: Charge) -> dict[str, Any]:
    """Usage in the Responses shape (input includes cached tokens), with its cost."""
    report: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
        "cost": cost_text(charge),
    }
    if usage.estimated:
        report["estimated"] = True
    return report


def finished(
    response: dict[str, Any], charge: Charge, *, incomplete: str | None, upstream_usage: Any = None
) -> dict[str, Any]:
    """The response as it ends: its status, and usage with the charge's cost (the upstream's
    own usage object kept where it was believed)."""
    if isinstance(upstream_usage, dict) and not charge.usage.estimated:
        usage = {**upstream_usage, "cost": cost_text(charge)}
    else:
        usage = usage_object(charge.usage, charge)
    ended = {**response, "usage": usage}
    if incomplete is not None:
        ended["status"] = "incomplete"
        ended["incomplete_details"] = {"reason": incomplete}
    else:
        ended["status"] = "completed"
        ended["completed_at"] = ended.get("completed_at") or response["created_at"]
    return ended


@dataclass
class _Open:
    """An output item being written: its index and the text of its current part. `kind` is
    "message", "reasoning", "call" (a function call) or "other" (a native item of another type)."""

    index: int
    kind: str
    text: list[str] = field(default_factory=list)


class ResponseEvents:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.output: list[dict[str, Any]] = []
        response["output"] = self.output
        self.sequence = 0
        self._open: dict[int, _Open] = {}

    # --- writing -------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, orjson.dumps(data)

    def start(self) -> list[Event]:
        return [
            self.event("response.created", response=self.response),
            self.event("response.in_progress", response=self.response),
        ]

    def open_text(self, kind: str, **extra: Any) -> tuple[int, list[Event]]:
        """A new message ("message") or reasoning ("reasoning") item with one empty part."""
        index = len(self.output)
        item: dict[str, Any]
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress"}
            item.update(role="assistant", content=[])
            part: dict[str, Any] = {
                "type": "output_text",
                "text": "",
                "annotations": [],
                "logprobs": [],
            }
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        item.update(extra)
        self.output.append(item)
        self._open[index] = _Open(index, kind)
        where = {"item_id": item["id"], "output_index": index}
        return index, [
            self.event("response.output_item.added", output_index=index, item=dict(item)),
            self.event("response.content_part.added", **where, content_index=0, part=part),
        ]

    def text_delta(self, index: int, delta: str) -> Event:
        state = self._open[index]
        state.text.append(delta)
        item = self.output[index]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if state.kind == "message":
            return self.event("response.output_text.delta", **where, delta=delta, logprobs=[])
        return self.event("response.reasoning_text.delta", **where, delta=delta)

    def open_call(self, call_id: str, name: str, namespace: str | None) -> tuple[int, list[Event]]:
        index = len(self.output)
        item: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        if namespace is not None:
            item["namespace"] = namespace
        self.output.append(item)
        self._open[index] = _Open(index, "call")
        return index, [
            self.event("response.output_item.added", output_index=index, item=dict(item))
        ]

    def arguments_delta(self, index: int, delta: str) -> Event:
        self._open[index].text.append(delta)
        item = self.output[index]
        return self.event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=index,
            delta=delta,
        )

    def close(self, index: int, *, status: str = "completed") -> list[Event]:
        """The done events of an open item (its text as written so far)."""
        state = self._open.pop(index, None)
        if state is None:
            return []
        item = self.output[index]
        text = "".join(state.text)
        where = {"item_id": item["id"], "output_index": index}
        events: list[Event] = []
        if state.kind == "other":
            pass  # an item Kyma does not write (a native upstream's): only its done event
        elif state.kind == "call":
            item["arguments"] = text
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=text,
                )
            )
        else:
            if state.kind == "message":
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                events.append(
                    self.event(
                        "response.output_text.done",
                        **where,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                )
            else:
                part = {"type": "reasoning_text", "text": text}
                events.append(
                    self.event("response.reasoning_text.done", **where, content_index=0, text=text)
                )
            item["content"] = [part]
            events.append(
                self.event("response.content_part.done", **where, content_index=0, part=part)
            )
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=index, item=item))
        return events

    def close_all(self, *, status: str = "completed") -> list[Event]:
        events: list[Event] = []
        for index in sorted(self._open):
            events.extend(self.close(index, status=status))
        return events

    @property
    def open_indexes(self) -> list[int]:
        return sorted(self._open)

    def end(
        self, charge: Charge, *, incomplete: str | None, upstream_usage: Any = None
    ) -> list[Event]:
        """Close what is open, then the terminal event with usage and cost."""
        events = self.close_all(status="incomplete" if incomplete else "completed")
        self.response = finished(
            self.response, charge, incomplete=incomplete, upstream_usage=upstream_usage
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self.event(kind, response=self.response))
        return events

    def fail(self, charge: Charge, message: str) -> list[Event]:
        """`response.failed`: the output as it stood, charged for what was delivered."""
        for state in self._open.values():
            item = self.output[state.index]
            item["status"] = "incomplete"
            if state.kind == "call":
                item["arguments"] = "".join(state.text)
            elif state.kind == "other":
                continue
            elif state.kind == "message":
                item["content"] = [
                    {"type": "output_text", "text": "".join(state.text), "annotations": []}
                ]
            else:
                item["content"] = [{"type": "reasoning_text", "text": "".join(state.text)}]
        self._open.clear()
        self.response = {
            **self.response,
            "status": "failed",
            "error": {"code": "server_error", "message": message},
            "usage": usage_object(charge.usage, charge),
        }
        return [self.event("response.failed", response=self.response)]

    # --- following a native stream -----------------------------------------------------------

    def follow(self, event: Mapping[str, Any]) -> None:
        """Keep the response as it stands from one upstream event (the upstream's numbering
        is kept: events Kyma adds continue it)."""
        number = event.get("sequence_number")
        if isinstance(number, int) and number >= self.sequence:
            self.sequence = number + 1
        kind = event.get("type")
        index = event.get("output_index")
        if kind == "response.output_item.added" and isinstance(event.get("item"), dict):
            item = dict(event["item"])
            index = index if isinstance(index, int) else len(self.output)
            while len(self.output) <= index:
                self.output.append({})
            self.output[index] = item
            kinds = {"message": "message", "reasoning": "reasoning", "function_call": "call"}
            self._open[index] = _Open(index, kinds.get(str(item.get("type")), "other"))
        elif not isinstance(index, int) or index not in self._open:
            return
        elif kind in (
            "response.output_text.delta",
            "response.reasoning_text.delta",
            "response.function_call_arguments.delta",
        ):
            delta = event.get("delta")
            if isinstance(delta, str):
                self._open[index].text.append(delta)
        elif kind == "response.content_part.added":
            self._open[index].text = []
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self.output[index] = dict(event["item"])
            del self._open[index]
