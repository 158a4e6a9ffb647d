"""Token usage as upstreams report it, in each dialect, brought to one form (`TokenUsage`) and
checked before anything is charged from it.

The dialects count differently, and a normaliser that mixes them up double-charges or gives
tokens away:

- OpenAI Chat Completions: `prompt_tokens` includes the cached ones
  (`prompt_tokens_details.cached_tokens`); `completion_tokens` includes reasoning
  (`completion_tokens_details.reasoning_tokens`).
- OpenAI Responses: the same, named `input_tokens` (`input_tokens_details.cached_tokens` and
  `.cache_write_tokens`) and `output_tokens` (`output_tokens_details.reasoning_tokens`).
- Anthropic Messages: `input_tokens` EXCLUDES the cache: reads are `cache_read_input_tokens`,
  writes `cache_creation_input_tokens`, both added here to make the prompt whole; thinking is
  `output_tokens_details.thinking_tokens`, part of `output_tokens`.

Usage that is missing or not believable (negative, fractional, NaN, absurdly large, a part
larger than its whole) is None: it is estimated instead, never trusted.
"""

from __future__ import annotations

from typing import Any

from core_service.values import TokenUsage

# No single request reports more than this; larger counts are taken as unreported.
_MAX_TOKENS = 100_000_000


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= _MAX_TOKENS else None


def _detail(usage: dict[str, Any], section: str, name: str) -> int | None:
    """A part inside a details object; absent (or null) is 0, anything unbelievable None."""
    details = usage.get(section)
    if details is None:
        return 0
    if not isinstance(details, dict):
        return None
    value = details.get(name)
    return 0 if value is None else _count(value)


def _whole(
    prompt: int | None,
    completion: int | None,
    *,
    cached: int | None = 0,
    written: int | None = 0,
    reasoning: int | None = 0,
) -> TokenUsage | None:
    if None in (prompt, completion, cached, written, reasoning):
        return None
    assert prompt is not None and completion is not None  # for the type checker
    assert cached is not None and written is not None and reasoning is not None
    if cached + written > prompt or reasoning > completion:
        return None  # a part larger than its whole: not believable
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )


def usage_from_upstream(usage: Any) -> TokenUsage | None:
    """An OpenAI Chat Completions (or legacy completions, or embeddings) `usage` object."""
    if not isinstance(usage, dict):
        return None
    return _whole(
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens", 0)),
        cached=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def usage_from_responses(usage: Any) -> TokenUsage | None:
    """An OpenAI Responses `usage` object."""
    if not isinstance(usage, dict):
        return None
    return _whole(
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens", 0)),
        cached=_detail(usage, "input_tokens_details", "cached_tokens"),
        written=_detail(usage, "input_tokens_details", "cache_write_tokens"),
        reasoning=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def usage_from_messages(usage: Any) -> TokenUsage | None:
    """An Anthropic Messages `usage` object (input tokens exclude the cache's)."""
    if not isinstance(usage, dict):
        return None
    uncached = _count(usage.get("input_tokens", 0))
    read = _count(usage.get("cache_read_input_tokens") or 0)
    written = _count(usage.get("cache_creation_input_tokens") or 0)
    if uncached is None or read is None or written is None:
        return None
    return _whole(
        uncached + read + written,
        _count(usage.get("output_tokens", 0)),
        cached=read,
        written=written,
        reasoning=_detail(usage, "output_tokens_details", "thinking_tokens"),
    )
