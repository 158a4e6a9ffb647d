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

import random
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

# Counters a deployment's limits are split over (see DeploymentGate), and the least TPM a shard
# holds (a request's tokens must fit in one shard: 128k covers most models' whole context).
DEPLOYMENT_SHARDS = 8
MIN_SHARD_TPM = 131_072


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
    slot_key: str = ""


_MAX_KEYS = 100_000


def _share(total: int, shards: int, shard: int) -> int:
    """Shard `shard`'s part of `total`: the parts add up to `total` exactly."""
    return total // shards + (1 if shard < total % shards else 0)


class DeploymentGate:
    """Upstream capacity per deployment, shared by all nodes: `enter` is None when the
    deployment is saturated (the router then tries the next one).

    No hot key: a deployment's limits are split over up to `shards` counters (`DEPLOYMENT_SHARDS`),
    each with its own Redis Cluster hash tag (``dep:<model/deployment/shard>``), and each request
    draws on one shard picked at random (and on a second one if that is full). Shard ``i`` of ``n``
    holds ``limit // n`` (plus one for the first ``limit % n`` shards), so the shards' limits add
    up to the deployment's exactly and each is exact (store.py): a deployment never admits more
    than its limits in any window, nor holds more than `max_concurrent` slots. The price is
    fairness at saturation: a request is refused when the two shards it tried are full though
    another still has room, so a deployment may admit a little less than its limit (up to one
    request per shard it never drew). The shard count is at most the smallest request limit
    (RPM, concurrency), so no shard has a limit of zero, and small enough that each shard holds
    at least `MIN_SHARD_TPM` tokens per minute (one shard when TPM is below twice that); a request
    needing more tokens than a shard's share of TPM is refused by this deployment.
    """

    def __init__(
        self,
        store: RateLimitStore,
        tasks: BackgroundTasks,
        *,
        shards: int = DEPLOYMENT_SHARDS,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._shards = shards
        self._rng = rng or random.Random()
        # Counter keys by (model, deployment, shard, what): few, and asked for on every request.
        self._keys: dict[tuple[str, str, int, str], str] = {}

    def _key(self, model: Model, deployment: Deployment, shard: int, what: str) -> str:
        known = (model.name, deployment.name, shard, what)
        key = self._keys.get(known)
        if key is None:
            if len(self._keys) >= _MAX_KEYS:  # names of a catalog long replaced
                self._keys.clear()
            key = rate_key("dep", rate_key(model.name, deployment.name, str(shard)), what)
            self._keys[known] = key
        return key

    def shard_count(self, deployment: Deployment) -> int:
        limits = deployment.limits
        bounds = [self._shards]
        bounds += [n for n in (limits.rpm, limits.max_concurrent) if n is not None]
        if limits.tpm is not None:
            bounds.append(limits.tpm // MIN_SHARD_TPM)
        return max(1, min(bounds))

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
        shards = self.shard_count(deployment)
        first = self._rng.randrange(shards)
        waits = []
        for attempt in range(min(2, shards)):
            entered = await self._enter_shard(
                model, deployment, tokens, (first + attempt) % shards, shards
            )
            if isinstance(entered, Ticket):
                return entered
            waits.append(entered)
        return min(waits)

    async def _enter_shard(
        self, model: Model, deployment: Deployment, tokens: int, shard: int, shards: int
    ) -> Ticket | int:
        limits = deployment.limits
        counted: list[Limit] = []
        if limits.rpm is not None:
            counted.append(
                Limit(
                    self._key(model, deployment, shard, "rpm"),
                    _share(limits.rpm, shards, shard),
                    1,
                )
            )
        token_limit = None
        if limits.tpm is not None:
            token_limit = Limit(
                self._key(model, deployment, shard, "tpm"),
                _share(limits.tpm, shards, shard),
                tokens,
            )
            counted.append(token_limit)
        second = 0
        if counted:
            decision = await self._store.admit(counted)
            if not decision.admitted:
                return decision.retry_after_s
            second = decision.second
        slot = None
        slot_key = self._key(model, deployment, shard, "slots")
        if limits.max_concurrent is not None:
            slot = await self._store.acquire_slot(
                slot_key,
                _share(limits.max_concurrent, shards, shard),
                ttl_s=deployment.timeouts.total + 30,
            )
            if slot is None:
                for limit in counted:
                    self._adjust(limit.key, second, -limit.cost)
                return 1
        return Ticket(deployment, token_limit, second, slot, counted, slot_key)

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
            store, key, slot = self._store, ticket.slot_key, ticket.slot
            self._tasks.spawn(f"release {key}", lambda: store.release_slot(key, slot))
        if ticket.token_limit is not None and actual_tokens is not None:
            delta = actual_tokens - ticket.token_limit.cost
            if delta:
                self._adjust(ticket.token_limit.key, ticket.second, delta)

    def _adjust(self, key: str, second: int, delta: int) -> None:
        store = self._store
        self._tasks.spawn(f"adjust {key}", lambda: store.adjust(key, second, delta))
