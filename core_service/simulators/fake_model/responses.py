"""The fake model behind OpenAI's Responses API (`POST /responses`): a `response` object, or its
event stream in the order OpenAI sends it (`response.created`, `response.in_progress`, each
output item's added / delta / done events, `response.completed` or `response.incomplete`), each
event with its `sequence_number`.

It keeps no state between requests but its prompt cache: `previous_response_id` and `store`
are refused and ignored respectively (Kyma keeps conversations itself).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core_service.simulators.fake_model.checks import (
    FakeRequestError,
    JsonObject,
    missing,
    optional_bool,
    optional_int,
    wrong_type,
)
from core_service.simulators.fake_model.turns import (
    Prompt,
    Tool,
    Turn,
    fragments_of,
)
from core_service.tokens import count_chat_prompt

if TYPE_CHECKING:
    from core_service.simulators.fake_model.model import FakeModel


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict)
        )
    return ""


def _conversation(request: Mapping[str, Any]) -> tuple[list[JsonObject], bool]:
    """The request's input as chat-like messages (for hashing and counting), and whether the
    last of them is the user's."""
    messages: list[JsonObject] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = request.get("input")
    if items is None:
        raise missing("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise wrong_type("input", "a string or a non-empty array of items", items)
    last_is_user = False
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise wrong_type(f"input[{index}]", "an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise FakeRequestError(400, f"Invalid role {role!r}.", f"input[{index}].role")
            messages.append({"role": role, "content": _text_of(item.get("content"))})
            last_is_user = role == "user"
        elif kind == "function_call":
            messages.append(
                {"role": "assistant", "content": f"{item.get('name')}({item.get('arguments')})"}
            )
            last_is_user = False
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _text_of(item.get("output"))})
            last_is_user = False
        elif kind == "reasoning":
            continue
        else:
            raise FakeRequestError(
                400, f"Input items of type {kind!r} are not supported.", f"input[{index}].type"
            )
    return messages, last_is_user


def _tools(request: Mapping[str, Any]) -> tuple[Tool, ...]:
    found: list[Tool] = []
    for tool in request.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("name"), str):
            found.append(Tool(tool["name"], tool.get("parameters") or {}))
    return tuple(found)


def _tool_choice(request: Mapping[str, Any]) -> str:
    choice = request.get("tool_choice")
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return "auto"


@dataclass(frozen=True, slots=True)
class _Plan:
    response: JsonObject  # the response object as it stands when the stream starts
    turn: Turn
    prompt: Prompt


def _plan(fake: FakeModel, request: Mapping[str, Any], model: str) -> _Plan:
    if request.get("previous_response_id") is not None:
        raise FakeRequestError(
            400,
            "This server keeps no responses: send the whole conversation.",
            "previous_response_id",
        )
    messages, last_is_user = _conversation(request)
    limit = optional_int(request, "max_output_tokens", 1, fake.max_output_tokens)
    reasoning = request.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    prompt = Prompt(
        key=messages,
        prompt_tokens=count_chat_prompt(messages),
        cached_tokens=fake.cached_prefix_tokens(messages),
        tools=_tools(request),
        tool_choice=_tool_choice(request),
        last_user_text=messages[-1]["content"] if last_is_user else None,
        reasoning=effort not in (None, "none"),
        limit=limit,
    )
    response: JsonObject = {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(fake.clock()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": limit,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None},
        "store": optional_bool(request, "store") if "store" in request else True,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation", "disabled"),
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }
    return _Plan(response, fake.turn(prompt), prompt)


def _usage(plan: _Plan) -> JsonObject:
    turn, prompt = plan.turn, plan.prompt
    return {
        "input_tokens": prompt.prompt_tokens,
        "input_tokens_details": {"cached_tokens": prompt.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": turn.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": turn.reasoning_tokens},
        "total_tokens": prompt.prompt_tokens + turn.completion_tokens,
    }


def _items(turn: Turn) -> list[JsonObject]:
    """The finished output items of a turn."""
    items: list[JsonObject] = []
    if turn.reasoning:
        items.append(
            {
                "id": _id("rs"),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": turn.reasoning_text}],
                "status": "completed",
            }
        )
    if turn.call is not None:
        items.append(
            {
                "id": _id("fc"),
                "type": "function_call",
                "call_id": turn.call.call_id,
                "name": turn.call.name,
                "arguments": turn.call.arguments,
                "status": "completed",
            }
        )
    else:
        status = "completed" if turn.finish == "stop" else "incomplete"
        items.append(
            {
                "id": _id("msg"),
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [
                    {
                        "type": "output_text",
                        "text": turn.output_text,
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        )
    return items


def _finished(plan: _Plan, items: list[JsonObject]) -> JsonObject:
    response = dict(plan.response)
    response["output"] = items
    response["usage"] = _usage(plan)
    if plan.turn.finish == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
        response["completed_at"] = response["created_at"]
    return response


def response(fake: FakeModel, request: Mapping[str, Any], *, model: str) -> JsonObject:
    plan = _plan(fake, request, model)
    return _finished(plan, _items(plan.turn))


def response_events(
    fake: FakeModel, request: Mapping[str, Any], *, model: str
) -> Iterator[JsonObject]:
    """The stream's events (each with `type` and `sequence_number`); validation happens on the
    call, events are made as they are consumed."""
    plan = _plan(fake, request, model)
    return _events(plan)


def _events(plan: _Plan) -> Iterator[JsonObject]:
    sequence = 0

    def event(kind: str, **fields: Any) -> JsonObject:
        nonlocal sequence
        body = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return body

    yield event("response.created", response=plan.response)
    yield event("response.in_progress", response=plan.response)
    items = _items(plan.turn)
    for index, item in enumerate(items):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            for piece in fragments_of(item["arguments"]):
                yield event("response.function_call_arguments.delta", **where, delta=piece)
            yield event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
        else:
            empty = {**item, "status": "in_progress", "content": []}
            yield event("response.output_item.added", output_index=index, item=empty)
            part = item["content"][0]
            reasoning = item["type"] == "reasoning"
            pieces = plan.turn.reasoning if reasoning else plan.turn.text
            kind = "reasoning_text" if reasoning else "output_text"
            yield event(
                "response.content_part.added",
                **where,
                content_index=0,
                part={**part, "text": ""},
            )
            extra: JsonObject = {} if reasoning else {"logprobs": []}
            for piece in pieces:
                yield event(
                    f"response.{kind}.delta", **where, content_index=0, delta=piece, **extra
                )
            yield event(
                f"response.{kind}.done", **where, content_index=0, text=part["text"], **extra
            )
            yield event("response.content_part.done", **where, content_index=0, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
    finished = _finished(plan, items)
    terminal = "response.incomplete" if finished["status"] == "incomplete" else "response.completed"
    yield event(terminal, response=finished)


def is_token_event(event: Mapping[str, Any]) -> bool:
    return event.get("type") in (
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
    )
