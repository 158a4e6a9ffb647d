"""What a caller is told about its limits (OpenAI's `x-ratelimit-*` facts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimitSnapshot:
    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_ms: int

    def as_metadata(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.__dict__.items()}
