"""Metering a request: hold its worst-case cost before it is forwarded, record what a stream
has delivered as it goes (checkpoints), and settle at the actual cost afterwards — queued on
the database's writer and retried until it lands.

A response is released only once its settlement has committed (`Metering.landed`: one group
commit, shared with every other request of the batch), so a node that dies right after
answering has already billed what it answered — there is no checkpoint to fall back on for a
unary answer. The wait is bounded (`SETTLEMENT_WAIT_SECONDS`) and skipped while the database is
failing: then the answer goes out at once and the settlement stays queued until it lands (only
a crash during the outage can then lose it, and the hold's expiry ends it at its checkpoint).

The worst case is the prompt estimate with a margin (Kyma's token count is an approximation of
the upstream's tokenizer, and chat templates add their own preamble: it holds estimate × 1.25
plus the model's `prompt_overhead_tokens`, 64 unless the catalogue says) at the input price, plus the
output the request allows (`max_tokens` × `n`, or the model's output cap) at the output price.

The hold is placed through the caller's key: if the key has a spend cap, the same batch that
decides it against the balance decides it against the cap's room (403 key_spend_cap_reached,
nothing charged, when the cap cannot cover it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from core_service.billing.holds import Holds, Placed, Settlement
from core_service.billing.key_spend import resets_at
from core_service.billing.pricing import cost_nanos, nanos_to_usd, usage_cost_nanos
from core_service.catalog import Deployment, Model, Price
from core_service.clock import Clock, SystemClock
from core_service.errors import InsufficientCredits, KeySpendCapReached
from core_service.values import InferenceRequest, Principal, TokenUsage


def prompt_tokens_to_hold(estimate: int, model: Model) -> int:
    """Kyma's count with a margin (upstream tokenizers differ: +25%) and what the model's chat
    template adds to every prompt (its system preamble and role markers)."""
    return estimate + estimate // 4 + model.prompt_overhead_tokens


def output_tokens_to_hold(request: InferenceRequest, model: Model) -> int:
    if request.endpoint == "embeddings":
        return 0
    if request.max_output_tokens is not None:
        return request.max_output_tokens
    return model.max_output_tokens * request.choices


def _affordable_max_tokens(available: int, prompt_cost: int, model: Model, choices: int) -> int:
    per_token = model.price.output_nanos_per_million
    if per_token == 0:
        return model.max_output_tokens
    return max((available - prompt_cost) * 10**6 // per_token // max(choices, 1), 0)


@dataclass(frozen=True)
class Charge:
    usage: TokenUsage
    cost_nanos: int


def price_of(model: Model, deployment: Deployment | None = None) -> Price:
    """The model's price, with the deployment's own prompt-cache prices where it sets them."""
    if deployment is None:
        return model.price
    return model.price.with_cache_prices(
        deployment.cached_input_per_million, deployment.cache_write_per_million
    )


def charge_for(model: Model, usage: TokenUsage, deployment: Deployment | None = None) -> Charge:
    return Charge(usage, usage_cost_nanos(price_of(model, deployment), usage))


def settlement_of(charge: Charge) -> Settlement:
    usage = charge.usage
    return Settlement(
        cost_nanos=charge.cost_nanos,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=usage.estimated,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


class Reservation:
    """One request's hold. End it once: `settle` with what was used, or `release`; record a
    stream's progress with `checkpoint` meanwhile."""

    __slots__ = ("_metering", "_hold_id", "_account_id", "_key_id", "_amount", "_ended")

    def __init__(
        self, metering: Metering, hold_id: str, account_id: str, amount: int, key_id: str | None
    ) -> None:
        self._metering = metering
        self._hold_id = hold_id
        self._account_id = account_id
        self._key_id = key_id
        self._amount = amount
        self._ended = False

    @property
    def hold_id(self) -> str:
        return self._hold_id

    @property
    def amount_nanos(self) -> int:
        """What is held: the most the request can be charged."""
        return self._amount

    def capped(self, charge: Charge) -> Charge:
        """The charge as it will be made: never more than the hold. Usage views, the request
        log and the response all show this, so they agree with the ledger."""
        if charge.cost_nanos <= self._amount:
            return charge
        return Charge(charge.usage, self._amount)

    def settle(self, charge: Charge) -> asyncio.Future[int | None] | None:
        """Queue the settlement; the future resolves once it has committed (None: already
        ended). Pass it to `Metering.landed` before releasing the response."""
        if self._ended:
            return None
        self._ended = True
        ended = self._metering.holds.settle(
            self._hold_id, self._account_id, settlement_of(charge), key_id=self._key_id
        )
        self._metering.counted("settled")
        return ended

    def release(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._metering.holds.release(self._hold_id, self._account_id, key_id=self._key_id)
        self._metering.counted("released")

    def checkpoint(self, charge: Charge) -> None:
        if not self._ended:
            self._metering.holds.checkpoint(self._hold_id, self._account_id, settlement_of(charge))


# How long a response waits for its settlement to commit before it goes out anyway.
SETTLEMENT_WAIT_SECONDS = 2.0


class Metering:
    def __init__(
        self,
        holds: Holds,
        *,
        counted: Callable[[str], None] = lambda _: None,
        clock: Clock | None = None,
    ) -> None:
        self.holds = holds
        # Counts hold outcomes for metrics: placed, refused, settled, released.
        self.counted = counted
        self._clock = clock or SystemClock()

    async def landed(self, ended: asyncio.Future[int | None] | None) -> None:
        """Wait (bounded) until a settlement has committed, unless the database is failing.
        A caller that is cancelled meanwhile does not cancel the settlement."""
        if ended is None or ended.done() or self.holds.writer.failing:
            return
        # A settlement that fails or is late stays the writer's to retry; the answer goes out.
        # A future of its own, woken by the settlement or the timer, rather than wait_for and
        # shield (a task and three futures on every request's path).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        ended.add_done_callback(wake)
        timer = loop.call_later(SETTLEMENT_WAIT_SECONDS, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            ended.remove_done_callback(wake)

    async def reserve(
        self, principal: Principal, request: InferenceRequest, model: Model, request_id: str
    ) -> Reservation:
        prompt_tokens = prompt_tokens_to_hold(request.prompt_tokens_estimate, model)
        output_tokens = output_tokens_to_hold(request, model)
        # Every prompt token at the dearest input price any deployment of the model may charge
        # (a cache write can cost more than plain input).
        highest = max(
            [model.price.highest_input_nanos_per_million]
            + [price_of(model, d).highest_input_nanos_per_million for d in model.deployments]
        )
        prompt_cost = -(-prompt_tokens * highest // 10**6)
        amount = prompt_cost + cost_nanos(model.price, 0, output_tokens)
        placed = await self.holds.place(
            principal.account_id,
            amount,
            request_id=request_id,
            model=model.name,
            key_id=principal.key_id,
        )
        self.counted("refused" if placed.hold_id is None else "placed")
        if placed.hold_id is None:
            affordable = _affordable_max_tokens(
                placed.available_nanos, prompt_cost, model, request.choices
            )
            if placed.key_cap:
                raise self._over_cap(principal, placed, amount, affordable)
            advice = (
                f"With this prompt your balance affords {request.output_limit_param}={affordable}."
                if affordable > 0
                else "Your balance does not cover this prompt."
            )
            raise InsufficientCredits(
                f"Insufficient credits: this request may cost up to ${nanos_to_usd(amount)} "
                f"and your available balance is ${nanos_to_usd(placed.available_nanos)}. "
                f"{advice} Add credits to continue."
            )
        return Reservation(self, placed.hold_id, principal.account_id, amount, principal.key_id)

    def _over_cap(
        self, principal: Principal, placed: Placed, amount: int, affordable: int
    ) -> KeySpendCapReached:
        limits = principal.key_limits
        cap = limits.spend_cap_nanos
        per = {"daily": " a day", "weekly": " a week", "monthly": " a month"}.get(
            limits.cap_interval or "", ""
        )
        reset = resets_at(limits.cap_interval, self._clock.now())
        when = (
            f" It starts again at {reset.isoformat().replace('+00:00', 'Z')}."
            if reset
            else " Raise the cap to go on."
        )
        cap_text = f"${nanos_to_usd(cap)}{per}" if cap is not None else "its cap"
        advice = (
            f" With this prompt the room left affords max_tokens={affordable}."
            if affordable > 0
            else ""
        )
        return KeySpendCapReached(
            f"This API key's spend cap ({cap_text}) is reached: this request may cost up to "
            f"${nanos_to_usd(amount)} and the cap leaves ${nanos_to_usd(placed.available_nanos)}."
            f"{advice}{when}"
        )
