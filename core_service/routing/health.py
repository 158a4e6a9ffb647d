"""Deployment health as one node sees it: a circuit breaker, requests in flight, and latency.

Passive: `failures_to_open` consecutive failures (connection errors, timeouts, 5xx, 429) open
the breaker for a cool-down that doubles each time it opens again without a success in
between (up to `max_cooldown`); an upstream's Retry-After lengthens the cool-down to it. When
the cool-down has passed the breaker is half-open: one request (or the active prober) tries the
deployment, and its success closes the breaker, its failure opens it again for longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failures_to_open: int = 3
    base_cooldown: float = 5.0
    max_cooldown: float = 300.0
    ewma_alpha: float = 0.3


@dataclass
class DeploymentHealth:
    policy: BreakerPolicy
    consecutive_failures: int = 0
    opened_until: float = 0.0
    cooldown: float = 0.0
    probing: bool = False  # a half-open trial is under way
    in_flight: int = 0
    latency_ewma: float | None = None  # seconds to first byte
    requests: int = 0
    failures: int = 0
    last_error: str = ""
    _open: bool = field(default=False, repr=False)

    def state(self, now: float) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.opened_until else BreakerState.HALF_OPEN

    def admits(self, now: float) -> bool:
        """Whether a request may go here now (a half-open breaker admits one trial at a time)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.probing:
            return True
        return False

    def start(self, now: float) -> None:
        self.in_flight += 1
        self.requests += 1
        if self.state(now) is BreakerState.HALF_OPEN:
            self.probing = True

    def succeeded(self, latency: float | None) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.consecutive_failures = 0
        self._open = False
        self.probing = False
        self.cooldown = 0.0
        if latency is not None:
            alpha = self.policy.ewma_alpha
            self.latency_ewma = (
                latency
                if self.latency_ewma is None
                else (alpha * latency + (1 - alpha) * self.latency_ewma)
            )

    def failed(self, now: float, error: str, *, retry_after: float | None = None) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.failures += 1
        self.last_error = error
        self.consecutive_failures += 1
        was_trial = self.probing
        self.probing = False
        if was_trial or self.consecutive_failures >= self.policy.failures_to_open or retry_after:
            self._trip(now, retry_after)

    def ended_unjudged(self) -> None:
        """The request ended without saying anything of the deployment (e.g. the client left)."""
        self.in_flight = max(0, self.in_flight - 1)
        self.probing = False

    def _trip(self, now: float, retry_after: float | None) -> None:
        grown = self.cooldown * 2 if self._open or self.cooldown else self.policy.base_cooldown
        self.cooldown = min(max(grown, self.policy.base_cooldown), self.policy.max_cooldown)
        wait = max(self.cooldown, retry_after or 0.0)
        self._open = True
        self.opened_until = now + wait

    def retry_in(self, now: float) -> float:
        return max(0.0, self.opened_until - now)
