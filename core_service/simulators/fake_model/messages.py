"""The fake model behind Anthropic's Messages API (`POST /messages`, `POST
/messages/count_tokens`): a `message` object, or its event stream as Anthropic sends it
(`message_start`, `ping`, `content_block_start` / `_delta` / `_stop` per block,
`message_delta` with the usage, `message_stop`).

Anthropic counts the cache apart: `input_tokens` excludes the tokens read from or written to
the prompt cache. A prefix is cached only up to a `cache_control` breakpoint: the first request
writes it, the next ones read it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from core_service.simulators.fake_model.checks import (
    FakeRequestError,
    JsonObject,
    missing,
    optional_int,
    wrong_type,
)
from core_service.simulators.fake_model.turns import (
    Prompt,
    Tool,
    Turn,
    fragments_of,
    prefix_chain,
)
from core_service.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_OVERHEAD_TOKENS,
    count_tokens,
)

if TYPE_CHECKING:
    from core_service.simulators.fake_model.model import FakeModel

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def error_body(message: str, kind: str = "invalid_request_error") -> JsonObject:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_use":
        return f"{block.get('name')}({orjson.dumps(block.get('input')).decode()})"
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "".join(_block_text(part) for part in content)
        return str(content or "")
    if kind == "image":
        return "[image]"
    return ""


@dataclass(frozen=True, slots=True)
class _Entry:
    """One block of the prompt, in order: what the cache and the token count go by."""

    role: str
    text: str
    breakpoint: bool

    @property
    def tokens(self) -> int:
        return MESSAGE_OVERHEAD_TOKENS + count_tokens(self.text)


def _entries(request: Mapping[str, Any]) -> tuple[list[_Entry], bool]:
    """The prompt's blocks, and whether the last message is the user's own words (not tool
    results)."""
    entries: list[_Entry] = []
    system = request.get("system")
    if isinstance(system, str) and system:
        entries.append(_Entry("system", system, False))
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                entries.append(_Entry("system", _block_text(block), "cache_control" in block))
    messages = request.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list) or not messages:
        raise wrong_type("messages", "a non-empty array", messages)
    last_is_user = False
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise wrong_type(f"messages.{index}", "an object", message)
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise FakeRequestError(400, f"Invalid role {role!r}.", f"messages.{index}.role")
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise wrong_type(f"messages.{index}.content", "a string or an array", content)
        results = False
        for block in blocks:
            breakpoint = isinstance(block, dict) and "cache_control" in block
            if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
                continue
            results = results or (isinstance(block, dict) and block.get("type") == "tool_result")
            entries.append(_Entry(str(role), _block_text(block), breakpoint))
        last_is_user = role == "user" and not results
    return entries, last_is_user


def _tools(request: Mapping[str, Any]) -> tuple[Tool, ...]:
    found = []
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            if tool.get("defer_loading"):
                continue  # not shown to the model until a tool search finds it
            found.append(Tool(tool["name"], tool.get("input_schema") or {}))
    return tuple(found)


def _tool_choice(request: Mapping[str, Any]) -> str:
    choice = request.get("tool_choice")
    if not isinstance(choice, dict):
        return "auto"
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return {"any": "required", "none": "none"}.get(str(kind), "auto")


@dataclass(frozen=True, slots=True)
class _Plan:
    message_id: str
    model: str
    turn: Turn
    prompt: Prompt
    show_thinking: bool

    @property
    def uncached_input(self) -> int:
        p = self.prompt
        return p.prompt_tokens - p.cached_tokens - p.cache_write_tokens


def _cached(fake: FakeModel, entries: list[_Entry]) -> tuple[int, int]:
    """(read, written): prompt tokens read from the cache and written to it."""
    breakpoints = [i + 1 for i, entry in enumerate(entries) if entry.breakpoint]
    if not breakpoints:
        return 0, 0
    chain = prefix_chain([(e.role, e.text) for e in entries[: breakpoints[-1]]])
    marks = [chain[length - 1] for length in breakpoints]
    seen = fake.cache.longest_seen(marks)
    fake.cache.remember(marks)
    read = sum(e.tokens for e in entries[: breakpoints[seen - 1]]) if seen else 0
    written = sum(e.tokens for e in entries[: breakpoints[-1]]) - read
    return read, written


def _plan(fake: FakeModel, request: Mapping[str, Any], model: str, *, budget: bool) -> _Plan:
    entries, last_is_user = _entries(request)
    limit = optional_int(request, "max_tokens", 1, fake.max_output_tokens)
    if limit is None and budget:
        raise missing("max_tokens")
    thinking = request.get("thinking")
    thinking = thinking if isinstance(thinking, dict) else {}
    read, written = _cached(fake, entries) if budget else (0, 0)
    last = entries[-1] if entries else None
    prompt = Prompt(
        key=[(e.role, e.text) for e in entries],
        prompt_tokens=REPLY_OVERHEAD_TOKENS + sum(e.tokens for e in entries),
        tools=_tools(request),
        tool_choice=_tool_choice(request),
        last_user_text=last.text if last is not None and last_is_user else None,
        reasoning=thinking.get("type") in ("enabled", "adaptive"),
        limit=limit,
        cached_tokens=read,
        cache_write_tokens=written,
    )
    return _Plan(
        _id("msg"),
        model,
        fake.turn(prompt),
        prompt,
        show_thinking=thinking.get("display") != "omitted",
    )


def _signature(plan: _Plan) -> str:
    return "fake-signature-" + plan.message_id[-8:]


def _blocks(plan: _Plan) -> list[JsonObject]:
    turn = plan.turn
    blocks: list[JsonObject] = []
    if turn.reasoning:
        text = turn.reasoning_text if plan.show_thinking else ""
        blocks.append({"type": "thinking", "thinking": text, "signature": _signature(plan)})
    if turn.call is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": turn.call.call_id.replace("call_", "toolu_"),
                "name": turn.call.name,
                "input": orjson.loads(turn.call.arguments),
            }
        )
    else:
        blocks.append({"type": "text", "text": turn.output_text})
    return blocks


def _usage(plan: _Plan, output_tokens: int) -> JsonObject:
    return {
        "input_tokens": plan.uncached_input,
        "cache_creation_input_tokens": plan.prompt.cache_write_tokens,
        "cache_read_input_tokens": plan.prompt.cached_tokens,
        "output_tokens": output_tokens,
        "output_tokens_details": {"thinking_tokens": plan.turn.reasoning_tokens},
    }


def message(fake: FakeModel, request: Mapping[str, Any], *, model: str) -> JsonObject:
    plan = _plan(fake, request, model, budget=True)
    return {
        "id": plan.message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(plan),
        "stop_reason": _STOP_REASONS[plan.turn.finish],
        "stop_sequence": None,
        "usage": _usage(plan, plan.turn.completion_tokens),
    }


def count(fake: FakeModel, request: Mapping[str, Any], *, model: str) -> JsonObject:
    plan = _plan(fake, request, model, budget=False)
    return {"input_tokens": plan.prompt.prompt_tokens}


def message_events(
    fake: FakeModel, request: Mapping[str, Any], *, model: str
) -> Iterator[JsonObject]:
    plan = _plan(fake, request, model, budget=True)
    return _events(plan)


def _events(plan: _Plan) -> Iterator[JsonObject]:
    start: JsonObject = {
        "id": plan.message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(plan, 1),
    }
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    turn = plan.turn
    for index, block in enumerate(_blocks(plan)):
        kind = block["type"]
        if kind == "thinking":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            }
            for piece in turn.reasoning if plan.show_thinking else ():
                delta = {"type": "thinking_delta", "thinking": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            delta = {"type": "signature_delta", "signature": block["signature"]}
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        elif kind == "tool_use":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {**block, "input": {}},
            }
            assert turn.call is not None
            for piece in fragments_of(turn.call.arguments):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            for piece in turn.text:
                delta = {"type": "text_delta", "text": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": _STOP_REASONS[turn.finish], "stop_sequence": None},
        "usage": _usage(plan, turn.completion_tokens),
    }
    yield {"type": "message_stop"}


def is_token_event(event: Mapping[str, Any]) -> bool:
    if event.get("type") != "content_block_delta":
        return False
    delta = event.get("delta")
    return isinstance(delta, dict) and delta.get("type") != "signature_delta"
