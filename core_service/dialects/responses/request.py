"""Reading an OpenAI Responses request: the shape of the fields Kyma knows (a 400 naming the
field, as OpenAI answers), the input as items (a string is one user message), the stored
conversation a `previous_response_id` continues put in front of it, and what policy needs
(model, output limit, a prompt estimate).

Item types Kyma does not know pass unchecked to a deployment that speaks Responses natively;
translation to chat completions refuses them (`to_chat`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core_service import tokens
from core_service.errors import InvalidRequest, NotFound
from core_service.inference.requests import request_body
from core_service.values import InferenceRequest

_ROLES = ("user", "assistant", "system", "developer")
# Fields Kyma keeps in its own hands: it has no background jobs, conversations or prompt
# templates to serve them with, whatever the deployment.
_NEVER = ("background", "conversation", "prompt")


@dataclass
class ResponsesCall:
    """A Responses request as the dialect reads it."""

    response_id: str
    created_at: int
    body: dict[str, Any]
    # The whole input as items: the stored conversation first, then this request's own.
    items: list[dict[str, Any]]
    store: bool


def _wrong(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", param=param)


def _string(item: Mapping[str, Any], name: str, param: str) -> None:
    if not isinstance(item.get(name), str):
        if item.get(name) is None:
            raise InvalidRequest(
                f"Missing required parameter: '{param}.{name}'.", param=f"{param}.{name}"
            )
        raise _wrong(f"{param}.{name}", "a string")


def _check_content(content: Any, param: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong(param, "a string or an array of content parts")
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _wrong(where, "an object with a 'type'")
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            _string(part, "text", where)
        elif kind == "refusal":
            _string(part, "refusal", where)


def _check_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _wrong(param, "an object")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise _wrong(f"{param}.type", "a string")
    if kind == "message":
        if item.get("role") not in _ROLES:
            choices = ", ".join(f"'{r}'" for r in _ROLES)
            raise InvalidRequest(
                f"Invalid value for '{param}.role': expected one of {choices}.",
                param=f"{param}.role",
            )
        _check_content(item.get("content"), f"{param}.content")
        return {**item, "type": "message"}
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            _string(item, name, param)
    elif kind == "function_call_output":
        _string(item, "call_id", param)
        output = item.get("output")
        if not isinstance(output, str):
            _check_content(output, f"{param}.output")
    return item


def input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as items."""
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise _wrong("input", "a string or an array of input items")
    return [_check_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _item_text(item: Mapping[str, Any]) -> str:
    """What an item puts in the prompt, for the estimate."""
    kind = item.get("type")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            return content
        return " ".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content or []
            if isinstance(part, dict)
        )
    if kind == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else orjson.dumps(output).decode()
    return orjson.dumps(item).decode()


def estimate_prompt(items: list[dict[str, Any]], instructions: Any, tools: Any) -> int:
    """Kyma's count of the prompt: every item, the instructions and the tools' definitions
    (an agent's tools can outweigh its conversation)."""
    total = tokens.REPLY_OVERHEAD_TOKENS
    for item in items:
        total += tokens.MESSAGE_OVERHEAD_TOKENS + tokens.count_tokens(_item_text(item))
    if isinstance(instructions, str):
        total += tokens.MESSAGE_OVERHEAD_TOKENS + tokens.count_tokens(instructions)
    if tools:
        total += tokens.count_tokens(orjson.dumps(tools).decode())
    return total


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return value


def parse_body(raw: bytes) -> dict[str, Any]:
    return request_body(raw, missing_model="You must provide a model parameter.")


def read_request(
    body: dict[str, Any],
    *,
    stream: bool | None,
    response_id: str,
    created_at: int,
    previous: list[dict[str, Any]] | None,
) -> InferenceRequest:
    """What policy needs of a Responses body; `previous` is the stored conversation that
    `previous_response_id` names (already looked up)."""
    for name in _NEVER:
        if body.get(name) not in (None, False):
            raise InvalidRequest(
                f"Kyma does not support '{name}' in the Responses API.", param=name
            )
    own = input_items(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _wrong("instructions", "a string")
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and "type" in t for t in tools)
    ):
        raise _wrong("tools", "an array of tools, each with a 'type'")
    limit = _positive_int(body, "max_output_tokens")
    wants_stream = _flag(body, "stream", False)
    store = _flag(body, "store", True)
    items = [*(previous or []), *own]
    return InferenceRequest(
        endpoint="responses",
        body=body,
        model=body["model"],
        stream=wants_stream if stream is None else stream,
        max_output_tokens=limit,
        prompt_tokens_estimate=estimate_prompt(items, instructions, tools),
        include_usage=True,
        stored_id=response_id if store else None,
        continues=previous_id(body),
        state=ResponsesCall(response_id, created_at, body, items, store),
    )


def previous_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _wrong("previous_response_id", "a string")
    return value


def not_found(response_id: str) -> NotFound:
    return NotFound(
        f"Previous response with id '{response_id}' not found.", param="previous_response_id"
    )
