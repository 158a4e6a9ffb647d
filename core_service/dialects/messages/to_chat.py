"""An Anthropic Messages request as a chat completions request, for a deployment that does not
speak Messages. Every field is translated, or is a no-op by its own definition, or is refused
with a 400 that names it:

- `system` (a string, or text blocks joined by newlines) → a leading system message; a
  `system` message inside `messages` → a system message in its place.
- Text and image blocks (base64 → a data URL, or a URL) → chat content parts; `tool_use`
  → the assistant's `tool_calls` (input as JSON arguments); `tool_result` → a `tool` message
  (its text; `is_error` has no place in chat, the result's text goes as it is), ahead of the
  rest of that user turn. Thinking blocks from earlier turns are not sent: chat has no place
  for them, and open models' chat templates drop earlier reasoning anyway.
- `cache_control` hints are dropped: chat upstreams cache prompts by themselves.
- Custom tools → function tools (`input_schema` → `parameters`); a tool with
  `defer_loading` is not shown to the model until a `tool_reference` in a tool result loads
  it (as Anthropic's tool search does). Anthropic-defined and server tools (bash, text editor,
  computer use, web search, code execution, …) have no chat equivalent: refused.
- `tool_choice` (auto / any → required / tool / none; `disable_parallel_tool_use` →
  `parallel_tool_calls: false`), `stop_sequences` → `stop`, `temperature`, `top_p`, `top_k`,
  `metadata.user_id` → `user`, `output_config.effort` → `reasoning_effort`,
  `output_config.format` → `response_format`.
- No-ops: `thinking` (whether an open model reasons is its own; `max_tokens` bounds all
  output, thinking included; `display: "omitted"` is honoured on the way back), and
  `context_management` edits that clear thinking (no thinking is ever sent to chat).
- Refused: anything else (`container`, `mcp_servers`, other context edits, document and
  search-result blocks, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from core_service.dialects.messages.request import MessagesCall
from core_service.errors import InvalidRequest

_SAME_IN_CHAT = ("temperature", "top_p", "top_k")
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "tools",
        "tool_choice",
        "stop_sequences",
        "metadata",
        "thinking",
        "context_management",
        "output_config",
        *_SAME_IN_CHAT,
    }
)
_TOOL_KEYS = frozenset(
    {
        "name",
        "description",
        "input_schema",
        "type",
        "cache_control",
        "defer_loading",
        "strict",
        "eager_input_streaming",
    }
)


def refused(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: {what} cannot be translated for this model's upstream, which speaks only "
        "chat completions.",
        param=param,
    )


def _image(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, dict) and source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise refused(f"{param}.source", "an image source other than base64 data or a URL")
    return {"type": "image_url", "image_url": {"url": url}}


def _parts(blocks: list[Any], param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{param}.{index}"
        if isinstance(block, str):
            parts.append({"type": "text", "text": block})
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, where))
        else:
            raise refused(f"{where}.type", f"a '{kind}' block")
    return parts


def _plain(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text alone as a string (what every chat template reads), anything else as parts."""
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _tool_result(block: Mapping[str, Any], param: str, loaded: set[str]) -> dict[str, Any]:
    content = block.get("content")
    texts: list[str] = []
    for index, part in enumerate(content if isinstance(content, list) else [content or ""]):
        if isinstance(part, str):
            texts.append(part)
        elif part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "tool_reference":
            name = str(part.get("tool_name"))
            loaded.add(name)
            texts.append(f"Tool {name} is now available.")
        else:
            raise refused(
                f"{param}.content.{index}.type", "a tool result that is not text (chat's are)"
            )
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": "".join(texts)}


def _assistant(blocks: list[Any], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        if isinstance(block, str):
            texts.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise refused(f"{param}.{index}.type", f"a '{kind}' block")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "\n".join(str(block.get("text", "")) for block in system if isinstance(block, dict))


def _messages(call: MessagesCall, loaded: set[str]) -> list[dict[str, Any]]:
    body = call.body
    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        if isinstance(system, list):
            for index, block in enumerate(system):
                if block.get("type") != "text":
                    raise refused(f"system.{index}.type", f"a '{block.get('type')}' block")
        chat.append({"role": "system", "content": _system_text(system)})
    for index, message in enumerate(body["messages"]):
        param = f"messages.{index}.content"
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else content
        role = message["role"]
        if role == "assistant":
            chat.append(_assistant(blocks, param))
            continue
        results = [
            _tool_result(block, f"{param}.{position}", loaded)
            for position, block in enumerate(blocks)
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        rest = [
            block
            for block in blocks
            if not (isinstance(block, dict) and block.get("type") == "tool_result")
        ]
        chat.extend(results)
        if rest or not results:
            parts = _parts(rest, param)
            chat.append(
                {"role": "system" if role == "system" else "user", "content": _plain(parts)}
            )
    return chat


def _tools(call: MessagesCall, loaded: set[str], chat: dict[str, Any]) -> None:
    tools = call.body.get("tools")
    if not tools:
        return
    functions = []
    for index, tool in enumerate(tools):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise refused(f"tools.{index}.type", f"the tool type '{kind}'")
        for key in tool:
            if key not in _TOOL_KEYS:
                raise refused(f"tools.{index}.{key}", "this tool field")
        if tool.get("defer_loading") and tool.get("name") not in loaded:
            continue  # not shown to the model until a tool search loads it
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object"}
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        functions.append({"type": "function", "function": function})
    if functions:
        chat["tools"] = functions


def _tool_choice(call: MessagesCall, chat: dict[str, Any]) -> None:
    choice = call.body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise InvalidRequest("tool_choice: Input should be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice.name: Field required", param="tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise refused("tool_choice.type", f"a tool choice of '{kind}'")
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _options(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key in metadata:
            if key != "user_id":
                raise refused(f"metadata.{key}", "this metadata")
        if metadata.get("user_id") is not None:
            chat["user"] = metadata["user_id"]
    context = body.get("context_management")
    if context is not None:
        for index, edit in enumerate((context or {}).get("edits") or []):
            kind = edit.get("type") if isinstance(edit, dict) else None
            if not (isinstance(kind, str) and kind.startswith("clear_thinking")):
                raise refused(f"context_management.edits.{index}.type", f"the edit '{kind}'")
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            raise InvalidRequest("output_config: Input should be an object", param="output_config")
        for key, value in config.items():
            if key == "effort" and value is not None:
                chat["reasoning_effort"] = value
            elif key == "format" and value is not None:
                if not isinstance(value, dict) or value.get("type") != "json_schema":
                    raise refused("output_config.format", "this output format")
                schema = {"name": "output", "schema": value.get("schema"), "strict": True}
                chat["response_format"] = {"type": "json_schema", "json_schema": schema}
            elif value is not None:
                raise refused(f"output_config.{key}", "this output option")
    stops = body.get("stop_sequences")
    if stops:
        chat["stop"] = stops


def to_chat(call: MessagesCall) -> dict[str, Any]:
    body = call.body
    for key, value in body.items():
        if key not in _KNOWN and value is not None:
            raise refused(key, "this field")
    loaded: set[str] = set()
    chat: dict[str, Any] = {"model": body["model"], "messages": _messages(call, loaded)}
    for key in _SAME_IN_CHAT:
        if body.get(key) is not None:
            chat[key] = body[key]
    _tools(call, loaded, chat)
    _tool_choice(call, chat)
    _options(body, chat)
    chat["max_completion_tokens"] = body["max_tokens"]
    return chat
