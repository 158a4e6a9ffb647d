"""Response headers the bridge adds: the request id and OpenAI's `x-ratelimit-*` set."""

from __future__ import annotations

from collections.abc import Mapping

from kyma.ratelimit.v1 import ratelimit_pb2


def format_duration(milliseconds: int) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s", "250ms"."""
    if milliseconds < 1000:
        return f"{max(milliseconds, 0)}ms"
    seconds = -(-milliseconds // 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


_FIELDS = (
    "limit_requests",
    "remaining_requests",
    "reset_requests_ms",
    "limit_tokens",
    "remaining_tokens",
    "reset_tokens_ms",
)


def _headers(values: dict[str, int]) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(values["limit_requests"]),
        "x-ratelimit-remaining-requests": str(values["remaining_requests"]),
        "x-ratelimit-reset-requests": format_duration(values["reset_requests_ms"]),
        "x-ratelimit-limit-tokens": str(values["limit_tokens"]),
        "x-ratelimit-remaining-tokens": str(values["remaining_tokens"]),
        "x-ratelimit-reset-tokens": format_duration(values["reset_tokens_ms"]),
    }


def rate_limit_headers(status: ratelimit_pb2.RateLimitStatus) -> dict[str, str]:
    if status.limit_requests == 0 and status.limit_tokens == 0:
        return {}
    return _headers({name: getattr(status, name) for name in _FIELDS})


def limit_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """The headers from a 429's error details (the core puts the same facts there)."""
    try:
        return _headers({name: int(metadata[name]) for name in _FIELDS})
    except (KeyError, ValueError):
        return {}
