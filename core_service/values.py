"""The value types the domain packages share: who is calling (principal and tier), what they
asked for (the parsed inference request), what it used (token usage) and what their limits
say (the rate-limit snapshot).

They live here, apart from the packages that produce them, so that accounts, billing, rate
limits and inference can all speak of them without importing one another. This module
imports nothing of Kyma's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Endpoint = Literal["chat.completions", "completions", "embeddings"]
ALL_ENDPOINTS: tuple[Endpoint, ...] = ("chat.completions", "completions", "embeddings")


class Tier(BaseModel):
    """One row of the tier table: the limits an account gets once its purchases reach
    `min_purchased_usd`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: int = Field(ge=0)
    min_purchased_usd: Decimal = Field(ge=0)
    rpm: int = Field(gt=0)
    model_rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)

    @property
    def min_purchased_nanos(self) -> int:
        return int(self.min_purchased_usd * 10**9)


# The terms of service's table (SPEC §5); the running table is configuration.
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(tier=0, min_purchased_usd=Decimal(0), rpm=30, model_rpm=25, tpm=200_000),
    Tier(tier=1, min_purchased_usd=Decimal(10), rpm=60, model_rpm=50, tpm=1_000_000),
    Tier(tier=2, min_purchased_usd=Decimal(50), rpm=120, model_rpm=100, tpm=2_000_000),
    Tier(tier=3, min_purchased_usd=Decimal(250), rpm=200, model_rpm=150, tpm=5_000_000),
    Tier(tier=4, min_purchased_usd=Decimal(1000), rpm=300, model_rpm=200, tpm=10_000_000),
)


CapInterval = Literal["daily", "weekly", "monthly"]
CAP_INTERVALS: tuple[CapInterval, ...] = ("daily", "weekly", "monthly")


@dataclass(frozen=True)
class KeyLimits:
    """What a key's owner limited it to (each None: not limited that way). The spend cap is
    decided with the hold, in the database (`billing/hold_store.py`); these copies serve the
    checks before it and the messages."""

    spend_cap_nanos: int | None = None
    cap_interval: CapInterval | None = None
    expires_at: datetime | None = None
    allowed_models: frozenset[str] | None = None

    @property
    def any(self) -> bool:
        return (
            self.spend_cap_nanos is not None
            or self.expires_at is not None
            or self.allowed_models is not None
        )


NO_KEY_LIMITS = KeyLimits()


@dataclass(frozen=True)
class Principal:
    """The caller of a request: who pays for it and through which key (or, for the account's
    own calls, which web session)."""

    account_id: str
    key_id: str
    account_status: str
    tier: Tier
    # Whether an admin pinned the tier (otherwise it follows total purchases).
    pinned: bool = False
    status_reason: str | None = None
    suspended_until: datetime | None = None
    key_limits: KeyLimits = NO_KEY_LIMITS
    # Set when a web session authenticated the call (then key_id is empty).
    session_id: str | None = None


@dataclass(frozen=True)
class RateLimitSnapshot:
    """What a caller is told about its limits (OpenAI's `x-ratelimit-*` facts)."""

    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_ms: int

    def as_metadata(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.__dict__.items()}


@dataclass(frozen=True)
class TokenUsage:
    """A request's tokens in one form whatever the upstream's dialect reported: every input
    token in `prompt_tokens` (cache reads and cache writes among them), every output token in
    `completion_tokens` (reasoning among them). See `inference/usage.py` for the dialects."""

    prompt_tokens: int
    completion_tokens: int
    # True when Kyma counted the tokens because the upstream did not report them.
    estimated: bool = False
    # Of the prompt: read from the upstream's prompt cache, and written to it.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # Of the completion: the model's reasoning (billed as output, shown apart).
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens - self.cache_write_tokens


@dataclass
class InferenceRequest:
    """An inference request as policy reads it; `body` is forwarded as the client sent it."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    # What the client allowed the model to write (None: the model's own cap applies).
    max_output_tokens: int | None
    prompt_tokens_estimate: int
    # Whether the client asked for the usage chunk at the end of a stream.
    include_usage: bool
    # How many choices (`n`) the client asked for.
    choices: int = 1
