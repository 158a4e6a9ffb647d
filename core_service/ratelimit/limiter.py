"""Rate-limit policy: which counters a request draws on and what it is told.

Per account (across all its keys and every node): requests per minute overall, requests per
minute per model, and tokens per minute, from the account's tier. Tokens are counted at admission
as the prompt estimate plus the output the request allows, and trued up to the actual usage
afterwards. Per deployment (from the catalogue): requests and tokens per minute and concurrent
requests, shared by every account, so the router can skip a saturated deployment.

Counting and its exactness are the store's (see store.py); a request refused here consumes
nothing, and one refused later (no credit, every deployment saturated) is given back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core_service.catalog import Deployment, Model
from core_service.errors import RateLimited
from core_service.ratelimit.store import (
    Decision,
    Limit,
    LimitState,
    RateLimitStore,
    rate_key,
)
from core_service.tasks import BackgroundTasks, cancel_safe
from core_service.values import Principal, RateLimitSnapshot


@dataclass(frozen=True)
class AccountLimits:
    """The three counters every request of an account draws on."""

    requests: Limit  # requests per minute, over all models
    model_requests: Limit  # requests per minute for this model
    tokens: Limit  # tokens per minute (prompt estimate + allowed output, trued up later)

    @classmethod
    def of(cls, principal: Principal, model: str, tokens: int) -> AccountLimits:
        tier, account = principal.tier, principal.account_id
        return cls(
            requests=Limit(rate_key("acct", account, "rpm"), tier.rpm, 1),
            model_requests=Limit(
                rate_key("acct", account, "model", model, "rpm"), tier.model_rpm, 1
            ),
            tokens=Limit(rate_key("acct", account, "tpm"), tier.tpm, tokens),
        )

    def all(self) -> tuple[Limit, Limit, Limit]:
        """In the order the store answers in (`Decision.states`)."""
        return (self.requests, self.model_requests, self.tokens)


def snapshot(
    requests: LimitState, model_requests: LimitState, tokens: LimitState
) -> RateLimitSnapshot:
    """Requests: the tighter of the overall and the per-model counter; tokens: the TPM counter."""
    tighter = min((requests, model_requests), key=lambda s: (s.remaining, -s.reset_ms))
    return RateLimitSnapshot(
        limit_requests=tighter.limit,
        remaining_requests=tighter.remaining,
        reset_requests_ms=tighter.reset_ms,
        limit_tokens=tokens.limit,
        remaining_tokens=tokens.remaining,
        reset_tokens_ms=tokens.reset_ms,
    )


def _refusal_message(decision: Decision, principal: Principal, model: str, tokens: int) -> str:
    if tokens > principal.tier.tpm:
        return (
            f"Request too large: it may use {tokens} tokens (prompt and max_tokens), more than your "
            f"tier's limit of {principal.tier.tpm} tokens per minute. Lower max_tokens."
        )
    names = ("requests per minute", f"requests per minute for {model}", "tokens per minute")
    which = [
        name for name, state in zip(names, decision.states, strict=True) if state.retry_after_s
    ]
    return (
        f"Rate limit reached for {' and '.join(which)} (tier {principal.tier.tier}: "
        f"{principal.tier.rpm} RPM, {principal.tier.model_rpm} per model, {principal.tier.tpm} TPM). "
        f"Retry in {decision.retry_after_s}s, or buy credits to reach a higher tier."
    )


@dataclass
class Admission:
    """One admitted request's draw on its account's counters."""

    limits: AccountLimits
    decision: Decision
    snapshot: RateLimitSnapshot


class AccountLimiter:
    def __init__(
        self, store: RateLimitStore, tasks: BackgroundTasks, *, shared: Callable[[], bool]
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._shared = shared

    @property
    def shared(self) -> bool:
        """Whether limits are counted across nodes right now (Redis reachable)."""
        return self._shared()

    async def admit(self, principal: Principal, model: str, tokens: int) -> Admission:
        limits = AccountLimits.of(principal, model, tokens)
        decision = await cancel_safe(
            self._store.admit(limits.all()),
            lambda decided: self._give_back(limits, decided),
        )
        view = snapshot(*decision.states)
        if not decision.admitted:
            raise RateLimited(
                _refusal_message(decision, principal, model, tokens),
                retry_after_seconds=decision.retry_after_s,
                snapshot=view,
            )
        return Admission(limits, decision, view)

    def give_back(self, admission: Admission) -> None:
        """The request was refused after admission (no credit, no capacity), or its client
        left before it was forwarded: it consumes nothing."""
        self._give_back(admission.limits, admission.decision)

    def _give_back(self, limits: AccountLimits, decision: Decision) -> None:
        if not decision.admitted:
            return
        for limit in limits.all():
            if limit.cost:
                self._adjust(limit.key, decision.second, -limit.cost)

    def true_up(self, admission: Admission, actual_tokens: int) -> None:
        tokens = admission.limits.tokens
        if actual_tokens != tokens.cost:
            self._adjust(tokens.key, admission.decision.second, actual_tokens - tokens.cost)

    def _adjust(self, key: str, second: int, delta: int) -> None:
        store = self._store
        self._tasks.spawn(f"adjust {key}", lambda: store.adjust(key, second, delta))

    async def status(self, principal: Principal, model: str) -> RateLimitSnapshot:
        """The account's limits now, without counting anything (per model when one is named)."""
        overall, per_model, tokens = await self._store.peek(
            AccountLimits.of(principal, model, 0).all()
        )
        return snapshot(overall, per_model if model else overall, tokens)


@dataclass
class Ticket:
    """A request's place on one deployment: counted against its limits, holding a slot."""

    deployment: Deployment
    token_limit: Limit | None
    second: int
    slot: str | None
    counted: list[Limit] = field(default_factory=list)


class DeploymentGate:
    """Upstream capacity per deployment, shared by all nodes: `enter` is None when the
    deployment is saturated (the router then tries the next one)."""

    def __init__(self, store: RateLimitStore, tasks: BackgroundTasks) -> None:
        self._store = store
        self._tasks = tasks

    @staticmethod
    def _key(model: Model, deployment: Deployment, what: str) -> str:
        return rate_key("dep", model.name, deployment.name, what)

    async def enter(self, model: Model, deployment: Deployment, tokens: int) -> Ticket | int:
        """A ticket, or the seconds until the deployment may have room. Safe to cancel: a
        ticket taken for a caller that left is handed back."""
        return await cancel_safe(
            self._enter(model, deployment, tokens),
            lambda ticket: (
                self.leave(model, ticket, None, give_back=True)
                if isinstance(ticket, Ticket)
                else None
            ),
        )

    async def _enter(self, model: Model, deployment: Deployment, tokens: int) -> Ticket | int:
        limits = deployment.limits
        counted: list[Limit] = []
        if limits.rpm is not None:
            counted.append(Limit(self._key(model, deployment, "rpm"), limits.rpm, 1))
        token_limit = None
        if limits.tpm is not None:
            token_limit = Limit(self._key(model, deployment, "tpm"), limits.tpm, tokens)
            counted.append(token_limit)
        second = 0
        if counted:
            decision = await self._store.admit(counted)
            if not decision.admitted:
                return decision.retry_after_s
            second = decision.second
        slot = None
        if limits.max_concurrent is not None:
            slot = await self._store.acquire_slot(
                self._key(model, deployment, "slots"),
                limits.max_concurrent,
                ttl_s=deployment.timeouts.total + 30,
            )
            if slot is None:
                for limit in counted:
                    self._adjust(limit.key, second, -limit.cost)
                return 1
        return Ticket(deployment, token_limit, second, slot, counted)

    def leave(
        self,
        model: Model,
        ticket: Ticket,
        actual_tokens: int | None,
        *,
        give_back: bool = False,
    ) -> None:
        """The request is done with the deployment: its slot is freed and its tokens trued up
        (`give_back`: it never reached the deployment, so it counts for nothing)."""
        if give_back:
            for limit in ticket.counted:
                if limit.cost:
                    self._adjust(limit.key, ticket.second, -limit.cost)
            actual_tokens = None
        if ticket.slot is not None:
            store, key, slot = (
                self._store,
                self._key(model, ticket.deployment, "slots"),
                ticket.slot,
            )
            self._tasks.spawn(f"release {key}", lambda: store.release_slot(key, slot))
        if ticket.token_limit is not None and actual_tokens is not None:
            delta = actual_tokens - ticket.token_limit.cost
            if delta:
                self._adjust(ticket.token_limit.key, ticket.second, delta)

    def _adjust(self, key: str, second: int, delta: int) -> None:
        store = self._store
        self._tasks.spawn(f"adjust {key}", lambda: store.adjust(key, second, delta))
