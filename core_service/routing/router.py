"""Choosing deployments for a request: which to try, in what order, and how many.

Strategies (per model, in the catalogue): `weighted` (random, by weight), `least_outstanding`
(fewest requests in flight on this node), `lowest_latency` (lowest moving average of time to
first byte; deployments not yet measured are tried first). Deployments whose circuit breaker is
open are left out (health is judged in `health.py`), with a panic threshold as Envoy's load
balancer has one: when fewer than `panic_threshold` of a model's deployments (and it has more
than one) are left, the breakers are ignored and all are used — a burst of failures never
leaves a model with none. A model with a single deployment that is ejected (failures from
several accounts) fails at once with 503 rather than waiting for timeouts. A request tries at
most `max_attempts` deployments, and every try after the first spends from the node's retry
budget.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from core_service.catalog import Deployment, Model
from core_service.clock import Clock
from core_service.errors import UpstreamUnavailable
from core_service.routing.budget import RetryBudget
from core_service.routing.health import BreakerPolicy, BreakerState, DeploymentHealth


@dataclass(frozen=True)
class DeploymentStatus:
    model: str
    deployment: str
    state: BreakerState
    retry_in: float
    in_flight: int
    # Accounts this deployment is ejected for on their own (their requests failed here).
    ejected_accounts: int
    latency_ewma: float | None
    requests: int
    failures: int
    last_error: str


class Attempt:
    """One try of one deployment; report how it went exactly once."""

    __slots__ = ("_health", "_clock", "_started", "_done", "_account")

    def __init__(self, health: DeploymentHealth, clock: Clock, account: str = "") -> None:
        self._health = health
        self._clock = clock
        self._account = account
        self._started = clock.monotonic()
        self._done = False
        health.start(self._started, account)

    def succeeded(self) -> None:
        if not self._done:
            self._done = True
            now = self._clock.monotonic()
            self._health.succeeded(now, now - self._started, account=self._account)

    def failed(self, error: str, *, retry_after: float | None = None) -> None:
        if not self._done:
            self._done = True
            self._health.failed(
                self._clock.monotonic(), error, account=self._account, retry_after=retry_after
            )

    def abandoned(self) -> None:
        if not self._done:
            self._done = True
            self._health.ended_unjudged(self._account)


class Router:
    def __init__(
        self,
        rng: random.Random,
        clock: Clock,
        *,
        policy: BreakerPolicy | None = None,
        budget: RetryBudget | None = None,
        max_attempts: int = 3,
        panic_threshold: float = 0.5,
    ) -> None:
        self._rng = rng
        self._clock = clock
        self._policy = policy or BreakerPolicy()
        self._budget = budget or RetryBudget(clock)
        self._max_attempts = max_attempts
        self._panic_threshold = panic_threshold
        self._health: dict[tuple[str, str], DeploymentHealth] = {}

    def health(self, model: Model, deployment: Deployment) -> DeploymentHealth:
        key = (model.name, deployment.name)
        found = self._health.get(key)
        if found is None:
            found = self._health[key] = DeploymentHealth(self._policy)
        return found

    def plan(self, model: Model, account: str = "") -> list[Deployment]:
        """The deployments to try for a request of `account`, in order. Raises
        UpstreamUnavailable (503, with when to retry) when every deployment's breaker is open."""
        self._budget.record_request()
        now = self._clock.monotonic()
        usable = [d for d in model.deployments if self.health(model, d).admits(now, account)]
        every = model.deployments
        if len(every) > 1 and len(usable) < self._panic_threshold * len(every):
            usable = list(every)  # panic: too few left to trust the breakers
        if not usable:
            wait = min(self.health(model, d).retry_in(now) for d in model.deployments)
            raise UpstreamUnavailable(
                f"Every upstream of '{model.name}' is failing right now. Retry in {max(1, round(wait))}s.",
                retry_after_seconds=max(1, round(wait)),
            )
        ordered = self._weighted_order(usable)
        if model.strategy == "least_outstanding":
            ordered.sort(key=lambda d: self.health(model, d).in_flight)
        elif model.strategy == "lowest_latency":
            ordered.sort(key=lambda d: _latency_key(self.health(model, d).latency_ewma))
        return ordered[: self._max_attempts]

    def may_retry(self) -> bool:
        return self._budget.try_spend()

    def start(self, model: Model, deployment: Deployment, *, account: str = "") -> Attempt:
        """A try of `deployment` for a request of `account` (whose failures count as one
        account's when health judges them)."""
        return Attempt(self.health(model, deployment), self._clock, account)

    def _weighted_order(self, deployments: Iterable[Deployment]) -> list[Deployment]:
        remaining = list(deployments)
        ordered: list[Deployment] = []
        while len(remaining) > 1:
            pick = self._rng.choices(range(len(remaining)), [d.weight for d in remaining])[0]
            ordered.append(remaining.pop(pick))
        return ordered + remaining

    def status(self, models: Iterable[Model]) -> list[DeploymentStatus]:
        now = self._clock.monotonic()
        result = []
        for model in models:
            for deployment in model.deployments:
                health = self.health(model, deployment)
                result.append(
                    DeploymentStatus(
                        model=model.name,
                        deployment=deployment.name,
                        state=health.state(now),
                        retry_in=health.retry_in(now),
                        in_flight=health.in_flight,
                        ejected_accounts=health.ejected_accounts(now),
                        latency_ewma=health.latency_ewma,
                        requests=health.requests,
                        failures=health.failures,
                        last_error=health.last_error,
                    )
                )
        return result

    def half_open(self, models: Iterable[Model]) -> list[tuple[Model, Deployment]]:
        """Deployments whose cool-down has passed and that no request is trying yet."""
        now = self._clock.monotonic()
        return [
            (model, deployment)
            for model in models
            for deployment in model.deployments
            if self.health(model, deployment).state(now) is BreakerState.HALF_OPEN
            and not self.health(model, deployment).probing
        ]


def _latency_key(latency: float | None) -> float:
    # Unmeasured deployments go first, so every deployment gets measured.
    return -1.0 if latency is None else latency
