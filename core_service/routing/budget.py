"""A retry budget for the whole node, so that failover cannot multiply load during an outage:
every request earns `ratio` of a retry, a retry spends one, and the savings are capped. With
the defaults, retries add at most 20% to upstream traffic (plus a small floor that lets a quiet
node still fail over)."""

from __future__ import annotations

from core_service.clock import Clock


class RetryBudget:
    def __init__(
        self, clock: Clock, *, ratio: float = 0.2, floor_per_second: float = 1.0, cap: float = 100.0
    ) -> None:
        self._clock = clock
        self._ratio = ratio
        self._floor = floor_per_second
        self._cap = cap
        self._tokens = min(cap, 10.0)
        self._at = clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._cap, self._tokens + (now - self._at) * self._floor)
        self._at = now

    def record_request(self) -> None:
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
