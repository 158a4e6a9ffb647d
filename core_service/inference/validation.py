"""Checking the shape of the OpenAI fields Kyma knows, before anything reaches an upstream.

A malformed body is the client's mistake: it gets a 400 that names the field, as OpenAI's own
API answers, and no upstream ever sees it — many upstreams answer such bodies with a 500,
which would count against their health and let one tenant's bad input take a model down for
everyone. Only the shape is checked (types, required members, known enumerations); values
the upstream decides about (a model's context length, a JSON schema's content) are its
business. Fields Kyma does not know pass through unchanged.

Nesting is bounded too (`MAX_DEPTH`): no request body Kyma serves needs more, and deeper ones
only cost CPU and stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core_service.errors import InvalidRequest

MAX_DEPTH = 64

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_TOOL_CHOICES = ("none", "auto", "required")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
    )


def _one_of(param: str, allowed: tuple[str, ...], value: Any) -> InvalidRequest:
    choices = ", ".join(f"'{a}'" for a in allowed)
    shown = f"'{value}'" if isinstance(value, str) and len(value) <= 40 else _kind(value)
    return InvalidRequest(
        f"Invalid value for '{param}': expected one of {choices}, but got {shown}.", param=param
    )


def too_deep(limit: int = MAX_DEPTH) -> InvalidRequest:
    return InvalidRequest(f"The request body is nested more than {limit} levels deep.")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise too_deep(limit)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _string(body: Mapping[str, Any], name: str, param: str, *, required: bool = False) -> None:
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
        return
    if not isinstance(body[name], str):
        raise _wrong(param, "a string", body[name])


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(param, "an object", value)
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong(param, "an array", value)
    return value


def _content_part(part: Any, role: str, param: str) -> None:
    if isinstance(part, str) and role != "user":
        return  # some clients send bare strings; upstreams accept them
    part = _object(part, param)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise _wrong(f"{param}.type", "a string", kind)
    allowed = _PART_TYPES[role]
    if kind not in allowed:
        raise _one_of(f"{param}.type", allowed, kind)
    if kind in ("text", "refusal"):
        _string(part, kind, f"{param}.{kind}", required=True)
    elif kind == "image_url":
        image = _object(part.get("image_url"), f"{param}.image_url")
        _string(image, "url", f"{param}.image_url.url", required=True)
        _string(image, "detail", f"{param}.image_url.detail")
    elif kind == "input_audio":
        audio = _object(part.get("input_audio"), f"{param}.input_audio")
        _string(audio, "data", f"{param}.input_audio.data", required=True)
        _string(audio, "format", f"{param}.input_audio.format", required=True)
    elif kind == "file":
        _object(part.get("file"), f"{param}.file")


def _tool_call(call: Any, param: str) -> None:
    call = _object(call, param)
    _string(call, "id", f"{param}.id", required=True)
    _string(call, "type", f"{param}.type")
    function = _object(call.get("function"), f"{param}.function")
    _string(function, "name", f"{param}.function.name", required=True)
    _string(function, "arguments", f"{param}.function.arguments", required=True)


def _message(message: Any, param: str) -> None:
    message = _object(message, param)
    role = message.get("role")
    if not isinstance(role, str):
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: '{param}.role'.", param=f"{param}.role"
            )
        raise _wrong(f"{param}.role", "a string", role)
    if role not in ROLES:
        raise _one_of(f"{param}.role", ROLES, role)
    _string(message, "name", f"{param}.name")
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if content is None:
        calls = tool_calls is not None or message.get("function_call") is not None
        if not (role == "assistant" and calls):
            raise InvalidRequest(
                f"Missing required parameter: '{param}.content'.", param=f"{param}.content"
            )
    elif isinstance(content, list):
        for index, part in enumerate(content):
            _content_part(part, role, f"{param}.content[{index}]")
    elif not isinstance(content, str):
        raise _wrong(f"{param}.content", "a string or an array of content parts", content)
    if tool_calls is not None:
        if role != "assistant":
            raise InvalidRequest(
                f"'{param}.tool_calls' is only allowed on assistant messages.",
                param=f"{param}.tool_calls",
            )
        for index, call in enumerate(_array(tool_calls, f"{param}.tool_calls")):
            _tool_call(call, f"{param}.tool_calls[{index}]")
    if role == "tool":
        _string(message, "tool_call_id", f"{param}.tool_call_id", required=True)


def _tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    for index, tool in enumerate(_array(tools, "tools")):
        param = f"tools[{index}]"
        tool = _object(tool, param)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise _wrong(f"{param}.type", "a string", kind)
        if kind == "function":
            function = _object(tool.get("function"), f"{param}.function")
            _string(function, "name", f"{param}.function.name", required=True)
            _string(function, "description", f"{param}.function.description")
            if function.get("parameters") is not None:
                _object(function["parameters"], f"{param}.function.parameters")
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return
    if isinstance(choice, str):
        raise _one_of("tool_choice", _TOOL_CHOICES, choice)
    choice = _object(choice, "tool_choice")
    _string(choice, "type", "tool_choice.type", required=True)
    if choice.get("type") == "function":
        function = _object(choice.get("function"), "tool_choice.function")
        _string(function, "name", "tool_choice.function.name", required=True)


def _response_format(body: Mapping[str, Any]) -> None:
    value = body.get("response_format")
    if value is None:
        return
    value = _object(value, "response_format")
    kind = value.get("type")
    if kind not in _RESPONSE_FORMATS:
        raise _one_of("response_format.type", _RESPONSE_FORMATS, kind)
    if kind == "json_schema":
        schema = _object(value.get("json_schema"), "response_format.json_schema")
        _string(schema, "name", "response_format.json_schema.name", required=True)
        if schema.get("schema") is not None:
            _object(schema["schema"], "response_format.json_schema.schema")


def _stop(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    for index, item in enumerate(_array(stop, "stop")):
        if not isinstance(item, str):
            raise _wrong(f"stop[{index}]", "a string", item)


def _numbers(body: Mapping[str, Any], *names: str) -> None:
    for name in names:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _wrong(name, "a number", value)


def check_chat(body: Mapping[str, Any]) -> None:
    """The shape of a chat completion request's known fields (`messages` already a list)."""
    for index, message in enumerate(body["messages"]):
        _message(message, f"messages[{index}]")
    _tools(body)
    _response_format(body)
    _stop(body)
    _numbers(body, "temperature", "top_p", "presence_penalty", "frequency_penalty")
    _string(body, "user", "user")


def check_completion(body: Mapping[str, Any]) -> None:
    _stop(body)
    _numbers(body, "temperature", "top_p", "presence_penalty", "frequency_penalty")
    _string(body, "user", "user")
