"""What a conforming Responses or Messages stream looks like, checked event by event: each event
against the official SDK's own type for it, the order the APIs document, and — as an oracle —
the SDK's own stream accumulator, which raises on anything it cannot follow."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

Event = tuple[str, dict[str, Any]]

_RESPONSES = TypeAdapter(ResponseStreamEvent)
_MESSAGES = TypeAdapter(RawMessageStreamEvent)
RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


async def sse_events(response: httpx.Response) -> list[Event]:
    """A stream's events as (event name, data), in order, parsed as SSE."""
    events: list[Event] = []
    name, data = "", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            events.append((name, orjson.loads("\n".join(data))))
            name, data = "", []
    return events


def check_responses(events: list[Event]) -> dict[str, Any]:
    """A Responses stream conforms; returns its terminal response object."""
    assert events, "no events"
    kinds = [name for name, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds[:3]
    assert kinds[-1] in RESPONSES_TERMINAL, kinds[-1]
    assert not any(kind in RESPONSES_TERMINAL for kind in kinds[:-1]), kinds
    open_items: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    texts: dict[int, str] = {}
    next_index = 0
    for number, (name, data) in enumerate(events):
        assert data["type"] == name, (name, data)
        assert data["sequence_number"] == number, (number, data)
        _RESPONSES.validate_python(data)
        index = data.get("output_index")
        if name == "response.output_item.added":
            assert index == next_index and index not in open_items, (index, next_index)
            open_items[index] = data["item"]
            texts[index] = ""
            next_index += 1
        elif name.endswith(".delta") or name.endswith(".done") or "content_part" in name:
            if name != "response.output_item.done":
                assert index in open_items, (name, index, "not open")
                assert data["item_id"] == open_items[index]["id"], (name, data)
            if name.endswith(".delta"):
                texts[index] += data["delta"]
            if name == "response.output_item.done":
                assert index in open_items, (name, index)
                item = data["item"]
                assert item["id"] == open_items.pop(index)["id"]
                done[index] = item
    terminal = events[-1][1]["response"]
    assert terminal["id"] == events[0][1]["response"]["id"]
    if kinds[-1] != "response.failed":
        assert not open_items, f"items left open: {open_items}"
        output = terminal["output"]
        assert [item["id"] for item in output] == [done[i]["id"] for i in sorted(done)]
        for index, item in done.items():
            if item["type"] == "function_call":
                assert item["arguments"] == texts[index]
            elif item["type"] == "message":
                assert "".join(p.get("text", "") for p in item["content"]) == texts[index]
        assert terminal["usage"]["cost"], "no cost in the final usage"
    # The SDK's own accumulator follows it all (and raises on what it cannot).
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for _, data in events:
        state.handle_event(construct_type_unchecked(value=data, type_=ResponseStreamEvent))  # type: ignore[arg-type]
    if kinds[-1] == "response.completed":
        assert state._completed_response is not None
    return terminal  # type: ignore[no-any-return]


def check_messages(events: list[Event]) -> Any:
    """An Anthropic Messages stream conforms; returns the SDK's accumulated message (None for a
    stream ended by an error)."""
    assert events, "no events"
    kinds = [name for name, _ in events]
    assert kinds[0] == "message_start", kinds[:2]
    assert kinds[-1] in ("message_stop", "error"), kinds[-1]
    open_blocks: dict[int, str] = {}
    next_index = 0
    delta_seen = False
    deltas = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
    for name, data in events:
        assert data["type"] == name, (name, data)
        if name == "error":
            assert set(data["error"]) >= {"type", "message"}
            continue
        _MESSAGES.validate_python(data) if name != "ping" else None
        if name == "content_block_start":
            assert data["index"] == next_index and not delta_seen
            open_blocks[data["index"]] = data["content_block"]["type"]
            next_index += 1
        elif name == "content_block_delta":
            kind = open_blocks[data["index"]]
            assert data["delta"]["type"] in (deltas[kind], "signature_delta"), (kind, data)
        elif name == "content_block_stop":
            del open_blocks[data["index"]]
        elif name == "message_delta":
            assert not open_blocks, f"blocks left open: {open_blocks}"
            assert not delta_seen
            delta_seen = True
            assert data["usage"]["cost"], "no cost in the final usage"
        elif name == "message_stop":
            assert delta_seen
    if kinds[-1] == "error":
        return None
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events:
        if name != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    return snapshot
