"""One turn of a conversation, whatever dialect asked for it: the text the fake model writes,
or the tool it calls, the reasoning it shows when asked to reason, and the prompt tokens a
prompt cache saved.

Each front end (chat completions, Responses, Messages) reduces its request to a `Prompt` and
renders the `Turn` in its own shape, so the three dialects answer a conversation alike.

The rules are simple enough for tests to steer:

- A tool is called when the request offers tools, does not forbid them, and the last user
  message names one (or `tool_choice` forces one); its arguments are filled in from the
  tool's JSON schema. After a tool result the model answers in text.
- It reasons (a few words, reported as reasoning tokens, within the output limit) only when
  the request asks it to.
- Its prompt cache remembers prefixes it has seen (`PromptCache`): the dialect decides which
  prefix counts (OpenAI: everything before the last message; Anthropic: up to the last
  `cache_control` breakpoint).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from core_service.tokens import count_tokens

# How many reasoning tokens the model spends when asked to reason (fewer under a small limit).
REASONING_TOKENS = 8

Finish = Literal["stop", "length", "tool_calls"]
Compose = Callable[[bytes, int, bool], list[str]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request as the model reads it, in no dialect in particular."""

    # What the reply depends on (hashed): the conversation in a canonical JSON-able form.
    key: Any
    prompt_tokens: int
    tools: tuple[Tool, ...] = ()
    # "auto", "none", "required", or the name of the tool that must be called.
    tool_choice: str = "auto"
    # The text of the last message when it is the user's (None after a tool result).
    last_user_text: str | None = None
    reasoning: bool = False
    limit: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str

    @property
    def tokens(self) -> int:
        return count_tokens(self.name) + count_tokens(self.arguments)


@dataclass(frozen=True, slots=True)
class Turn:
    reasoning: list[str]
    text: list[str]
    call: ToolCall | None
    finish: Finish

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning)

    @property
    def completion_tokens(self) -> int:
        return len(self.reasoning) + len(self.text) + (self.call.tokens if self.call else 0)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def output_text(self) -> str:
        return "".join(self.text)


def seed_of(key: Any, index: int = 0) -> bytes:
    encoded = orjson.dumps(key, option=orjson.OPT_SORT_KEYS, default=repr)
    return hashlib.sha256(encoded + index.to_bytes(4, "big")).digest()


def _value_for(schema: Any, word: str) -> Any:
    if not isinstance(schema, dict):
        return word
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return _arguments_for(schema, word)
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    return word


def _arguments_for(schema: Mapping[str, Any], word: str) -> dict[str, Any]:
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    return {name: _value_for(properties.get(name), word) for name in required if name in properties}


def _chosen_tool(prompt: Prompt) -> Tool | None:
    if not prompt.tools or prompt.tool_choice == "none":
        return None
    for tool in prompt.tools:
        if tool.name == prompt.tool_choice:
            return tool
    if prompt.last_user_text is None and prompt.tool_choice == "auto":
        return None  # after a tool result: answer
    text = prompt.last_user_text or ""
    for tool in prompt.tools:
        if tool.name in text:
            return tool
    return prompt.tools[0] if prompt.tool_choice == "required" else None


def plan_turn(
    prompt: Prompt,
    compose: Compose,
    *,
    default_tokens: int,
    index: int = 0,
    natural_tokens: int | None = None,
) -> Turn:
    """The model's turn. `compose(seed, n, ends_sentence)` writes n token pieces of prose.
    Without a limit the answer is `default_tokens` long; with one, it runs into the limit —
    unless `natural_tokens` is set and fits, when the answer ends by itself at that length."""
    seed = seed_of(prompt.key, index)
    limit = prompt.limit
    reasoning: list[str] = []
    if prompt.reasoning:
        spend = REASONING_TOKENS if limit is None else min(REASONING_TOKENS, limit // 2)
        if spend:
            reasoning = compose(hashlib.sha256(b"reasoning" + seed).digest(), spend, True)
    room = None if limit is None else limit - len(reasoning)
    tool = _chosen_tool(prompt)
    if tool is not None:
        word = compose(seed, 1, False)[0].lower()
        call = ToolCall(
            f"call_{secrets.token_hex(12)}",
            tool.name,
            orjson.dumps(_arguments_for(tool.schema, word)).decode(),
        )
        if room is None or call.tokens <= room:
            return Turn(reasoning, [], call, "tool_calls")
    if room is None:
        return Turn(reasoning, compose(seed, default_tokens, True), None, "stop")
    if natural_tokens is not None and natural_tokens <= room:
        return Turn(reasoning, compose(seed, natural_tokens, True), None, "stop")
    return Turn(reasoning, compose(seed, room, False), None, "length")


def fragments_of(text: str, pieces: int = 3) -> list[str]:
    """A tool call's arguments in a few streamed pieces."""
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def prefix_chain(items: Sequence[Any]) -> list[bytes]:
    """One digest per prefix of `items` (the i-th covers items[: i + 1]), each built on the one
    before, so a long conversation costs one pass."""
    chain: list[bytes] = []
    digest = b""
    for item in items:
        encoded = orjson.dumps(item, option=orjson.OPT_SORT_KEYS, default=repr)
        digest = hashlib.sha256(digest + encoded).digest()
        chain.append(digest)
    return chain


class PromptCache:
    """The prompt prefixes the model has seen, most recent last (bounded: the oldest are
    forgotten). Owned by one server instance, so separate upstreams cache separately."""

    def __init__(self, capacity: int = 16384) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def longest_seen(self, chain: Sequence[bytes]) -> int:
        """How many items the longest prefix seen before covers (0: none)."""
        for length in range(len(chain), 0, -1):
            if chain[length - 1] in self._seen:
                self._seen.move_to_end(chain[length - 1])
                return length
        return 0

    def remember(self, chain: Sequence[bytes]) -> None:
        for digest in chain:
            self._seen[digest] = None
            self._seen.move_to_end(digest)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
