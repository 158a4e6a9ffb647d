"""Checking requests the way OpenAI does, for the fake model: each refusal is an OpenAI-style
error naming the parameter, so the demo model and the test upstream answer bad input as a real
upstream would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JsonObject = dict[str, Any]

# OpenAI's own limits on these parameters.
MAX_CHOICES = 128
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_DIMENSIONS = 4096

_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class FakeRequestError(Exception):
    """A request the fake model refuses, carrying the HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code

    def body(self) -> JsonObject:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JsonObject:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- reading requests -------------------------------------------------------------------------


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def wrong_type(param: str, expected: str, value: Any) -> FakeRequestError:
    return FakeRequestError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param,
        code="invalid_type",
    )


def missing(param: str) -> FakeRequestError:
    return FakeRequestError(
        400, f"Missing required parameter: '{param}'.", param, code="missing_required_parameter"
    )


def optional_int(request: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python but not a JSON integer.
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong_type(name, "an integer", value)
    if value < low:
        raise FakeRequestError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            name,
            code="integer_below_min_value",
        )
    if value > high:
        raise FakeRequestError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            name,
            code="integer_above_max_value",
        )
    return value


def optional_bool(request: Mapping[str, Any], name: str) -> bool:
    value = request.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise wrong_type(name, "a boolean", value)
    return value


def requested_model(request: Any) -> str:
    """The `model` a request names; what the fake reports back as the model that answered."""
    if not isinstance(request, dict):
        raise wrong_type("body", "an object", request)
    model = request.get("model")
    if model is None or model == "":
        raise FakeRequestError(400, "you must provide a model parameter", "model")
    if not isinstance(model, str):
        raise wrong_type("model", "a string", model)
    return model


# What a request may ask the fake model to report, beyond what it generates (see `usage_shares`).
SIMULATE_USAGE = "simulate_usage"
USAGE_SHARES = ("cached_prompt_fraction", "reasoning_fraction")


def usage_shares(request: Mapping[str, Any], defaults: tuple[float, float]) -> tuple[float, float]:
    """The shares of the prompt reported as cached and of the completion reported as reasoning:
    the request's `simulate_usage` object where it sets them, else `defaults`."""
    asked = request.get(SIMULATE_USAGE)
    if asked is None:
        return defaults
    if not isinstance(asked, dict):
        raise wrong_type(SIMULATE_USAGE, "an object", asked)
    unknown = sorted(set(asked) - set(USAGE_SHARES))
    if unknown:
        raise FakeRequestError(
            400,
            f"Unknown field(s) in '{SIMULATE_USAGE}': {', '.join(unknown)}; "
            f"known: {', '.join(USAGE_SHARES)}.",
            SIMULATE_USAGE,
        )
    shares = []
    for name, default in zip(USAGE_SHARES, defaults, strict=True):
        value = asked.get(name, default)
        param = f"{SIMULATE_USAGE}.{name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong_type(param, "a number", value)
        if not 0 <= value <= 1:
            raise FakeRequestError(400, f"'{param}' must be between 0 and 1.", param)
        shares.append(float(value))
    return shares[0], shares[1]


def wants_usage(request: Mapping[str, Any], stream: bool) -> bool:
    options = request.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise FakeRequestError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    if not isinstance(options, dict):
        raise wrong_type("stream_options", "an object", options)
    return optional_bool(options, "include_usage")


def check_messages(request: Mapping[str, Any]) -> list[Any]:
    if "messages" not in request or request["messages"] is None:
        raise missing("messages")
    messages = request["messages"]
    if not isinstance(messages, list):
        raise wrong_type("messages", "an array", messages)
    if not messages:
        raise FakeRequestError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if role not in _CHAT_ROLES:
            raise FakeRequestError(
                400,
                f"Invalid value: {role!r}. Supported values are: "
                "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                f"{where}.role",
                code="invalid_value",
            )
        content = message.get("content")
        # An assistant turn may carry only tool calls; every other turn needs content.
        if content is None and role != "assistant":
            raise missing(f"{where}.content")
        if content is not None and not isinstance(content, (str, list)):
            raise wrong_type(f"{where}.content", "one of a string or array of objects", content)
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise wrong_type(
                        f"{where}.content[{part_index}]", "an object with a 'type'", part
                    )
    return messages


def check_prompt(request: Mapping[str, Any]) -> list[str | list[int]]:
    """The prompts of a legacy completions request, one entry per prompt."""
    if "prompt" not in request or request["prompt"] is None:
        raise missing("prompt")
    return text_inputs(request["prompt"], "prompt", allow_empty_text=True)


def text_inputs(value: Any, param: str, *, allow_empty_text: bool) -> list[str | list[int]]:
    """Splits OpenAI's four input shapes (str, list[str], list[int], list[list[int]]) into items."""
    expected = "a string, array of strings, array of integers, or array of arrays of integers"
    if isinstance(value, str):
        if not value and not allow_empty_text:
            raise FakeRequestError(400, f"'{param}' must not be empty.", param)
        return [value]
    if not isinstance(value, list):
        raise wrong_type(param, expected, value)
    if not value:
        raise FakeRequestError(
            400,
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param,
            code="empty_array",
        )
    if all(is_token_id(item) for item in value):
        return [list(value)]
    items: list[str | list[int]] = []
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(item, str):
            if not item and not allow_empty_text:
                raise FakeRequestError(400, f"'{where}' must not be empty.", where)
            items.append(item)
        elif isinstance(item, list) and item and all(is_token_id(token) for token in item):
            items.append(list(item))
        else:
            raise wrong_type(where, "a string or a non-empty array of non-negative integers", item)
    return items


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- producing text ---------------------------------------------------------------------------
