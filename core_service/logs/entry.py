"""One API request as it is logged (stored as given: the caller redacts content beforehand)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    id: str
    created_at: datetime  # timezone-aware; stored as UTC
    request_id: str
    account_id: str | None
    key_id: str | None  # the key's id, never the key
    endpoint: str
    model: str
    deployment: str
    status: str  # "ok" or an error reason such as "RATE_LIMIT_EXCEEDED"
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    estimated: bool
    stream: bool
    request_body: str
    response_body: str
    # Of the prompt tokens: cache reads and cache writes; of the completion: reasoning.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # The request's credit hold (its ledger entry is `usage:<hold id>`); None when it had none.
    hold_id: str | None = None

    def __post_init__(self) -> None:
        # Refused here, at the caller, rather than failing a whole batch in the writer later.
        if self.created_at.tzinfo is None:
            raise ValueError("RequestLogEntry.created_at must be timezone-aware")
