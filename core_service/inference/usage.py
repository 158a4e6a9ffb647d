"""Token usage as reported by upstreams, checked before anything is charged from it."""

from __future__ import annotations

from typing import Any

from core_service.values import TokenUsage

# No single request reports more than this; larger counts are taken as unreported.
_MAX_TOKENS = 100_000_000


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= _MAX_TOKENS else None


def usage_from_upstream(usage: Any) -> TokenUsage | None:
    """The upstream's `usage` object, or None when it is missing or not believable (negative,
    fractional, NaN, absurdly large): such usage is estimated instead, never trusted."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)
