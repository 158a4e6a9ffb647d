"""Response headers the bridge adds: the request id and OpenAI's `x-ratelimit-*` set."""

from __future__ import annotations

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


def rate_limit_headers(status: ratelimit_pb2.RateLimitStatus) -> dict[str, str]:
    if status.limit_requests == 0 and status.limit_tokens == 0:
        return {}
    return {
        "x-ratelimit-limit-requests": str(status.limit_requests),
        "x-ratelimit-remaining-requests": str(status.remaining_requests),
        "x-ratelimit-reset-requests": format_duration(status.reset_requests_ms),
        "x-ratelimit-limit-tokens": str(status.limit_tokens),
        "x-ratelimit-remaining-tokens": str(status.remaining_tokens),
        "x-ratelimit-reset-tokens": format_duration(status.reset_tokens_ms),
    }
