"""Deployment health as one node sees it, judged as Envoy's outlier detection judges a host:
on failures across requests — and across accounts — not on one request's bad luck.

Only failures the upstream is responsible for count: connection errors, timeouts, 5xx and
429 after Kyma validated the request (a malformed body is refused before it is sent, and an
upstream's own 4xx is the request's fault).

Within the last `window_seconds`, when at least `failures_to_open` of a deployment's requests
failed and they were at least `failure_ratio` of its requests:

- if they came from at least `min_accounts` different accounts, the deployment is ejected
  for everyone (the upstream is in trouble);
- otherwise it is ejected only for the accounts whose requests failed — their own failures
  and share of their own requests measured the same way. One account's requests, however
  many and however malformed, can never take a model down for the others, while that
  account (a single tenant, say) still gets fast failover away from a deployment that fails
  it.

An ejection lasts a cool-down that doubles each time it is ejected again without a success in
between (up to `max_cooldown`); an upstream's Retry-After lengthens it (for everyone: it is
the upstream's word). After the cool-down the breaker is half-open: one request (or the active
prober, for a global ejection) tries it, and its outcome closes the breaker or ejects again
for longer.

How many of a model's deployments may be left out at once, and what happens when too few are
left (the panic threshold), is the router's (`router.py`): this module judges one deployment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

_MAX_ACCOUNT_BREAKERS = 10_000


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failures_to_open: int = 3
    window_seconds: float = 10.0
    min_accounts: int = 3
    failure_ratio: float = 0.5
    base_cooldown: float = 5.0
    max_cooldown: float = 300.0
    ewma_alpha: float = 0.3


@dataclass
class _Breaker:
    """Open or closed, with its cool-down; half-open once the cool-down has passed."""

    opened_until: float = 0.0
    cooldown: float = 0.0
    probing: bool = False  # a half-open trial is under way
    open: bool = False

    def state(self, now: float) -> BreakerState:
        if not self.open:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.opened_until else BreakerState.HALF_OPEN

    def admits(self, now: float) -> bool:
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probing
        )

    def trip(self, now: float, policy: BreakerPolicy, retry_after: float | None) -> None:
        grown = self.cooldown * 2 if self.open or self.cooldown else policy.base_cooldown
        self.cooldown = min(max(grown, policy.base_cooldown), policy.max_cooldown)
        self.open = True
        self.opened_until = now + max(self.cooldown, retry_after or 0.0)

    def close(self) -> None:
        self.open = False
        self.probing = False
        self.cooldown = 0.0


@dataclass
class DeploymentHealth:
    policy: BreakerPolicy
    in_flight: int = 0
    latency_ewma: float | None = None  # seconds to first byte
    requests: int = 0
    failures: int = 0
    last_error: str = ""
    _global: _Breaker = field(default_factory=_Breaker, repr=False)
    _accounts: dict[str, _Breaker] = field(default_factory=dict, repr=False)
    # The window: (when, account, failed) of each judged request, oldest first.
    _outcomes: deque[tuple[float, str, bool]] = field(default_factory=deque, repr=False)

    @property
    def opened_until(self) -> float:
        return self._global.opened_until

    @property
    def probing(self) -> bool:
        return self._global.probing

    def state(self, now: float) -> BreakerState:
        """The deployment's state for everyone (an account's own ejection aside)."""
        return self._global.state(now)

    def ejected_accounts(self, now: float) -> int:
        return sum(1 for b in self._accounts.values() if b.state(now) is not BreakerState.CLOSED)

    def admits(self, now: float, account: str = "") -> bool:
        """Whether a request (of `account`) may go here now; a half-open breaker admits one
        trial at a time."""
        if not self._global.admits(now):
            return False
        own = self._accounts.get(account)
        return own is None or own.admits(now)

    def start(self, now: float, account: str = "") -> None:
        self.in_flight += 1
        self.requests += 1
        if self._global.state(now) is BreakerState.HALF_OPEN:
            self._global.probing = True
        own = self._accounts.get(account)
        if own is not None and own.state(now) is BreakerState.HALF_OPEN:
            own.probing = True

    def succeeded(self, now: float, latency: float | None, *, account: str = "") -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._record(now, account, failed=False)
        self._global.close()
        self._accounts.pop(account, None)
        if latency is not None:
            alpha = self.policy.ewma_alpha
            self.latency_ewma = (
                latency
                if self.latency_ewma is None
                else (alpha * latency + (1 - alpha) * self.latency_ewma)
            )

    def failed(
        self, now: float, error: str, *, account: str = "", retry_after: float | None = None
    ) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.failures += 1
        self.last_error = error
        self._record(now, account, failed=True)
        policy = self.policy
        trial = self._global.probing
        self._global.probing = False
        own = self._accounts.get(account)
        own_trial = own is not None and own.probing
        if own is not None:
            own.probing = False
        if trial or retry_after or self._outlier(now, None, min_accounts=policy.min_accounts):
            self._global.trip(now, policy, retry_after)
            self._outcomes.clear()  # a fresh window after an ejection
        elif own_trial or self._outlier(now, account, min_accounts=1):
            if own is None:
                if len(self._accounts) >= _MAX_ACCOUNT_BREAKERS:
                    self._accounts.clear()
                own = self._accounts[account] = _Breaker()
            own.trip(now, policy, None)

    def ended_unjudged(self, account: str = "") -> None:
        """The request ended without saying anything of the deployment (e.g. the client left)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._global.probing = False
        own = self._accounts.get(account)
        if own is not None:
            own.probing = False

    def _record(self, now: float, account: str, *, failed: bool) -> None:
        self._outcomes.append((now, account, failed))
        horizon = now - self.policy.window_seconds
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
        for name in [n for n, b in self._accounts.items() if not b.open]:
            del self._accounts[name]

    def _outlier(self, now: float, account: str | None, *, min_accounts: int) -> bool:
        """Enough failures, from enough accounts, and a large enough share of the requests —
        of everyone's (`account` None), or of one account's."""
        outcomes = [o for o in self._outcomes if account is None or o[1] == account]
        failed = [who for _, who, bad in outcomes if bad]
        if len(failed) < self.policy.failures_to_open:
            return False
        if len(set(failed)) < min_accounts:
            return False
        return len(failed) >= self.policy.failure_ratio * len(outcomes)

    def retry_in(self, now: float) -> float:
        return max(0.0, self._global.opened_until - now)
