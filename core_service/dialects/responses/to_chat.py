"""A Responses request as a chat completions request, for a deployment that does not speak
the Responses API. Every field is translated, or is a no-op by its own definition, or is
refused with a 400 that names it — nothing is dropped silently:

- `instructions` → a leading system message; input messages keep their roles, but
  `developer`, which open-model chat templates do not know, becomes `system` (OpenAI treats
  them alike); text, image (by URL or data URL) and file (inline data) parts map to chat parts.
- `function_call` items → the assistant's `tool_calls`; `function_call_output` → `tool`
  messages. Reasoning items from earlier turns are not sent: chat has no place for them, and
  open models' chat templates drop earlier reasoning anyway.
- Function tools → chat function tools; a `namespace` of functions → its functions, each
  named `namespace__name` (mapped back on the way out). Hosted tools (web search, file search,
  code interpreter, computer use, MCP, …) cannot run behind a chat upstream: refused.
- `tool_choice`, `parallel_tool_calls`, `temperature`, `top_p`, `user`, `safety_identifier`,
  `service_tier`, `prompt_cache_key`, `prompt_cache_retention` → the same chat fields;
  `text.format` → `response_format`; `text.verbosity` → `verbosity`; `reasoning.effort` →
  `reasoning_effort`; `max_output_tokens` → the output limit.
- No-ops: `store`, `previous_response_id` and `metadata` (Kyma keeps and echoes them),
  `reasoning.summary` (summaries are returned where the upstream gives reasoning), `include`
  of `reasoning.encrypted_content` (nothing is encrypted) or of hosted tools' outputs (no hosted
  tool runs), `max_tool_calls` (it bounds hosted tools only), `truncation: "disabled"`,
  `stream_options.include_obfuscation`, and `client_metadata` (Codex's notes about itself).
- Refused: anything else, such as `top_logprobs`, `truncation: "auto"`, `conversation`,
  `prompt`, `background`, item references and input items of hosted tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core_service.dialects.responses.request import ResponsesCall
from core_service.errors import InvalidRequest

# Separates a namespace from a function's name in the chat tool's name.
NAMESPACE_SEPARATOR = "__"

_SAME_IN_CHAT = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
)
# Fields that change nothing a chat upstream does (see the module's docstring).
_NO_OPS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "stream",
        "store",
        "previous_response_id",
        "metadata",
        "include",
        "max_tool_calls",
        "truncation",
        "stream_options",
        "client_metadata",
        "background",
        *_SAME_IN_CHAT,
    }
)
_VACUOUS_INCLUDES = frozenset(
    {
        "reasoning.encrypted_content",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "message.input_image.image_url",
    }
)


def refused(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}': {what} cannot be translated for this model's upstream, which speaks only "
        "chat completions.",
        param=param,
    )


@dataclass
class ChatTranslation:
    """The chat body, and how to name tool calls on the way back."""

    body: dict[str, Any]
    # chat function name → (namespace, name) for functions of a namespace
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)


def _text_part(part: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": part.get("text", "")}


def _user_part(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return _text_part(part)
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise refused(f"{param}.file_id", "an image by file id (send its URL or data URL)")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not isinstance(part.get("file_data"), str):
            raise refused(param, "a file by id or URL (send its data inline)")
        file = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise refused(f"{param}.type", f"a content part of type '{kind}'")


def _content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [_user_part(part, f"{param}[{i}]") for i, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts) and len(parts) == 1:
        return str(parts[0]["text"])
    return parts


def _assistant(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    content = item.get("content")
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if isinstance(content, str):
        message["content"] = content
        return message
    texts, refusals = [], []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind in ("output_text", "input_text", "text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            refusals.append(str(part.get("refusal", "")))
        else:
            raise refused(f"{param}.content[{index}].type", f"an assistant part of type '{kind}'")
    message["content"] = "".join(texts) if texts or not refusals else None
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _tool_output(output: Any, param: str) -> str:
    if isinstance(output, str):
        return output
    texts = []
    for index, part in enumerate(output):
        if part.get("type") not in ("input_text", "output_text", "text"):
            raise refused(
                f"{param}[{index}].type", "a tool output that is not text (chat tool results are)"
            )
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _chat_name(item: Mapping[str, Any]) -> str:
    namespace = item.get("namespace")
    name = str(item.get("name"))
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if isinstance(namespace, str) else name


def messages_of(call: ResponsesCall) -> list[dict[str, Any]]:
    """The conversation as chat messages."""
    messages: list[dict[str, Any]] = []
    instructions = call.body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    own_start = len(call.items) - len(_own(call))
    for position, item in enumerate(call.items):
        # Errors name the client's own input; stored items were checked when they were sent.
        param = (
            f"input[{position - own_start}]" if position >= own_start else "previous_response_id"
        )
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                messages.append(_assistant(item, param))
            else:
                chat_role = "system" if role == "developer" else role
                messages.append(
                    {
                        "role": chat_role,
                        "content": _content(item.get("content"), f"{param}.content"),
                    }
                )
        elif kind == "function_call":
            call_entry = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": _chat_name(item), "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call_entry)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call_entry]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _tool_output(item.get("output"), f"{param}.output"),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise refused(f"{param}.type", f"an input item of type '{kind}'")
    return messages


def _own(call: ResponsesCall) -> list[Any]:
    value = call.body.get("input")
    return [value] if isinstance(value, str) else list(value or [])


def _function(tool: Mapping[str, Any], name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tools(call: ResponsesCall, translation: ChatTranslation) -> None:
    tools = call.body.get("tools")
    if not tools:
        return
    chat_tools = []
    for index, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            chat_tools.append(_function(tool, str(tool.get("name"))))
        elif kind == "namespace":
            namespace = str(tool.get("name"))
            for inner_index, inner in enumerate(tool.get("tools") or []):
                if not isinstance(inner, dict) or inner.get("type") != "function":
                    raise refused(
                        f"tools[{index}].tools[{inner_index}].type",
                        "a namespaced tool that is not a function",
                    )
                name = f"{namespace}{NAMESPACE_SEPARATOR}{inner.get('name')}"
                translation.namespaced[name] = (namespace, str(inner.get("name")))
                chat_tools.append(_function(inner, name))
        else:
            raise refused(f"tools[{index}].type", f"the hosted tool '{kind}'")
    names = [tool["function"]["name"] for tool in chat_tools]
    if len(names) != len(set(names)):
        raise InvalidRequest("Tool names must be unique (namespaces included).", param="tools")
    translation.body["tools"] = chat_tools


def _tool_choice(call: ResponsesCall, translation: ChatTranslation) -> None:
    choice = call.body.get("tool_choice")
    if choice is None:
        return
    if choice in ("auto", "none", "required"):
        translation.body["tool_choice"] = choice
        return
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest(
                "Missing required parameter: 'tool_choice.name'.", param="tool_choice.name"
            )
        name = _chat_name(choice)
        translation.body["tool_choice"] = {"type": "function", "function": {"name": name}}
        return
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise refused("tool_choice", f"a tool choice of '{kind}'")


def _text(call: ResponsesCall, translation: ChatTranslation) -> None:
    text = call.body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidRequest("Invalid type for 'text': expected an object.", param="text")
    for key in text:
        if key not in ("format", "verbosity"):
            raise refused(f"text.{key}", "this text option")
    if text.get("verbosity") is not None:
        translation.body["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise refused("text.format.type", "this output format")
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        translation.body["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        translation.body["response_format"] = {"type": fmt["type"]}


def _reasoning(call: ResponsesCall, translation: ChatTranslation) -> None:
    reasoning = call.body.get("reasoning")
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise InvalidRequest("Invalid type for 'reasoning': expected an object.", param="reasoning")
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary"):
            raise refused(f"reasoning.{key}", "this reasoning option")
    if reasoning.get("effort") is not None:
        translation.body["reasoning_effort"] = reasoning["effort"]


def _check_no_ops(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key not in _NO_OPS and value is not None:
            raise refused(key, "this field")
    include = body.get("include") or []
    if not isinstance(include, list):
        raise InvalidRequest("Invalid type for 'include': expected an array.", param="include")
    for index, name in enumerate(include):
        if not isinstance(name, str) or name not in _VACUOUS_INCLUDES:
            raise refused(f"include[{index}]", f"including '{name}'")
    if body.get("truncation") not in (None, "disabled"):
        raise refused("truncation", "truncation other than 'disabled'")
    if body.get("background"):
        raise refused("background", "background mode")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_obfuscation"}:
        raise refused("stream_options", "these stream options")


def to_chat(call: ResponsesCall, max_output_tokens: int | None) -> ChatTranslation:
    body = call.body
    _check_no_ops(body)
    translation = ChatTranslation({"model": body["model"], "messages": messages_of(call)})
    for key in _SAME_IN_CHAT:
        if body.get(key) is not None:
            translation.body[key] = body[key]
    _tools(call, translation)
    _tool_choice(call, translation)
    _text(call, translation)
    _reasoning(call, translation)
    if max_output_tokens is not None:
        translation.body["max_completion_tokens"] = max_output_tokens
    return translation


def chat_name_of(translation: ChatTranslation, chat_name: str) -> tuple[str, str | None]:
    """A chat tool call's function name as the Responses API names it: (name, namespace)."""
    found = translation.namespaced.get(chat_name)
    if found is None:
        return chat_name, None
    namespace, name = found
    return name, namespace
