"""The path of one inference request through the core: authenticate, read the request, admit it
under the account's rate limits, hold its worst-case cost, pick deployments with room, forward
with failover before the first byte, relay, then settle the hold and true up the token count.
An answer (a unary reply, a stream's last message) is released once its settlement has
committed (`Metering.landed`), so what reached a client is billed even if this node dies next.

Both the unary and the streaming path live here so the HTTP bridge and direct gRPC callers get
exactly the same policy, in every API dialect: the dialect (`inference/dialect.py`) is a
parameter of the one path — how a body is read, what each deployment is sent, how its answer
comes back — never a copy of it.

A stream the upstream breaks after its first event ends in the client's dialect: the dialect's
failure events (OpenAI Responses' `response.failed`, Anthropic's `error`) are sent, charged for
what was delivered, and then the error is raised (OpenAI chat streams have no such event: the
transport reports the error).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from core_service import tokens
from core_service.accounts.auth import Authenticator
from core_service.billing.metering import (
    Charge,
    Metering,
    Reservation,
    charge_for,
    output_tokens_to_hold,
)
from core_service.catalog import CatalogHolder, Deployment, Model
from core_service.clock import Clock
from core_service.errors import (
    InvalidRequest,
    KymaError,
    ModelNotAllowed,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from core_service.inference.dialect import Dialect, Event, Exchange, Relay, TokenCounting
from core_service.inference.observer import Observation, RequestObserver
from core_service.ratelimit.limiter import (
    AccountLimiter,
    Admission,
    DeploymentGate,
    Ticket,
)
from core_service.routing.router import Attempt, Router
from core_service.standing import check_in_good_standing
from core_service.upstream.client import UpstreamClient, UpstreamFailure, UpstreamStream
from core_service.values import Endpoint, InferenceRequest, Principal, RateLimitSnapshot, TokenUsage

T = TypeVar("T")


@dataclass(frozen=True)
class UnaryResult:
    body: bytes
    charge: Charge
    limits: RateLimitSnapshot


@dataclass(frozen=True)
class StreamChunks:
    """Events for the client, in order (those that arrived from the upstream together)."""

    data: list[Event]
    limits: RateLimitSnapshot | None = None  # on the first event only


@dataclass(frozen=True)
class StreamEnd:
    charge: Charge
    limits: RateLimitSnapshot | None = None  # when the stream had no chunk before it
    # The client's last events (a cut stream's stop, the usage chunk with the charge), which
    # go out with the end: one message rather than two.
    data: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class _Try:
    """One deployment's turn: its place in the upstream limits and its health report."""

    ticket: Ticket
    attempt: Attempt


@dataclass(frozen=True)
class _Opened:
    """An upstream stream that has produced its first events (or ended without any)."""

    stream: UpstreamStream
    events: AsyncIterator[list[bytes]]
    first: list[Event]
    relay: Relay


@dataclass
class _Target:
    """Where a request may go: the deployments of `model` that serve its dialect."""

    model: Model
    account_id: str
    dialect: Dialect
    # Tokens counted at admission (what the upstream limits count too).
    tokens: int
    # Only deployments that speak the dialect natively (nothing to translate to).
    native_only: bool = False
    # Whether any upstream was sent the request (until then, it has used nothing at all).
    forwarded: bool = False

    def accepts(self, deployment: Deployment) -> bool:
        if self.native_only:
            return deployment.speaks(self.dialect.upstream)
        return deployment.serves(self.dialect.upstream)


@dataclass
class _Admitted:
    principal: Principal
    request: InferenceRequest
    admission: Admission
    reservation: Reservation
    target: _Target

    @property
    def model(self) -> Model:
        return self.target.model

    @property
    def dialect(self) -> Dialect:
        return self.target.dialect


class InferencePipeline:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        catalog: CatalogHolder,
        router: Router,
        upstream: UpstreamClient,
        metering: Metering,
        limiter: AccountLimiter,
        gate: DeploymentGate,
        clock: Clock,
        observer: RequestObserver,
        dialects: Mapping[Endpoint, Dialect],
        counting: TokenCounting | None = None,
    ) -> None:
        self._dialects = dialects
        self._counting = counting
        self._clock = clock
        self._observer = observer
        self._authenticator = authenticator
        self._catalog = catalog
        self._router = router
        self._upstream = upstream
        self._metering = metering
        self._limiter = limiter
        self._gate = gate

    def _dialect(self, endpoint: Endpoint) -> Dialect:
        dialect = self._dialects.get(endpoint)
        if dialect is None:
            raise InvalidRequest(f"Kyma does not serve the {endpoint} endpoint.")
        return dialect

    async def _read(
        self,
        dialect: Dialect,
        raw: bytes,
        authorization: str | None,
        observation: Observation,
        options: Mapping[str, str],
    ) -> tuple[Principal, InferenceRequest, Model]:
        """Who asks, for what, of which model: the checks every request passes first."""
        principal = await self._authenticator.authenticate(authorization)
        observation.principal = principal
        check_in_good_standing(principal, self._clock.now())
        request = await dialect.read(
            raw, stream=observation.stream, principal=principal, options=options
        )
        observation.stored_id = request.stored_id
        observation.continues = request.continues
        model = self._catalog.get(request.model)
        observation.model = model.name
        allowed = principal.key_limits.allowed_models
        if allowed is not None and model.name not in allowed:
            raise ModelNotAllowed(
                f"This API key may not use the model '{model.name}': its owner allowed only "
                f"{', '.join(sorted(allowed))}.",
                param="model",
            )
        endpoint = "messages" if dialect.endpoint == "messages.count_tokens" else dialect.endpoint
        if endpoint not in model.endpoints or not any(
            d.serves(dialect.upstream) for d in model.deployments
        ):
            raise InvalidRequest(
                f"The model '{model.name}' does not support the {endpoint} endpoint.",
                param="model",
            )
        return principal, request, model

    async def _admit(
        self,
        dialect: Dialect,
        raw: bytes,
        authorization: str | None,
        observation: Observation,
        options: Mapping[str, str],
    ) -> _Admitted:
        principal, request, model = await self._read(
            dialect, raw, authorization, observation, options
        )
        if request.choices > MAX_CHOICES:
            raise InvalidRequest(f"'n' is at most {MAX_CHOICES}.", param="n")
        if (
            request.max_output_tokens is not None
            and request.max_output_tokens > model.context_window
        ):
            raise InvalidRequest(
                f"{request.output_limit_param} × n ({request.max_output_tokens}) is more than "
                f"'{model.name}' can write (its context window is {model.context_window} tokens).",
                param=request.output_limit_param,
            )
        counted = request.prompt_tokens_estimate + output_tokens_to_hold(request, model)
        try:
            admission = await self._limiter.admit(principal, model.name, counted)
        except RateLimited:
            self._observer.limited(False)
            raise
        self._observer.limited(True)
        try:
            reservation = await self._metering.reserve(
                principal, request, model, observation.request_id
            )
        except BaseException:  # no credit, no database, or the client left
            self._limiter.give_back(admission)
            raise
        observation.hold_id = reservation.hold_id
        target = _Target(model, principal.account_id, dialect, counted)
        return _Admitted(principal, request, admission, reservation, target)

    def _abandon(self, admitted: _Admitted, error: BaseException) -> None:
        """The request ends before any usage: release its hold. If no upstream was sent it
        (Kyma refused it, or its client left first), it consumes no rate limit either;
        otherwise it counts as a request that used no tokens."""
        admitted.reservation.release()
        if not admitted.target.forwarded or isinstance(error, RateLimited):
            self._limiter.give_back(admitted.admission)
        else:
            self._limiter.true_up(admitted.admission, 0)

    def _finish(
        self, admitted: _Admitted, ticket: Ticket, charge: Charge
    ) -> asyncio.Future[int | None] | None:
        """Settle and account for the tokens used; returns the settlement, which the answer
        waits for (`Metering.landed`) before it is released."""
        settled = admitted.reservation.settle(charge)
        used = charge.usage.total_tokens
        self._limiter.true_up(admitted.admission, used)
        self._gate.leave(admitted.model, ticket, used)
        return settled

    async def _tries(self, target: _Target) -> AsyncGenerator[_Try, None]:
        """Tries of the model's deployments that serve the request's dialect, in routing order:
        healthy ones only, skipping those at capacity, each after the first paid from the retry
        budget. When capacity alone stopped every try, RateLimited with the soonest time one
        may have room."""
        model = target.model
        waits: list[int] = []
        tried = False
        for deployment in self._router.plan(model, target.account_id):
            if not target.accepts(deployment):
                continue
            if tried and not self._router.may_retry():
                break
            ticket = await self._gate.enter(model, deployment, target.tokens)
            if isinstance(ticket, int):
                waits.append(ticket)
                continue
            tried = True
            yield _Try(ticket, self._router.start(model, deployment, account=target.account_id))
        if not tried:
            raise RateLimited(
                f"Every upstream of '{model.name}' is at capacity. Retry shortly.",
                retry_after_seconds=max(1, min(waits, default=1)),
            )

    async def complete(
        self,
        endpoint: Endpoint,
        raw: bytes,
        authorization: str | None,
        request_id: str,
        options: Mapping[str, str] | None = None,
    ) -> UnaryResult:
        observation = self._observer.begin(endpoint, request_id, raw, stream=False)
        try:
            result = await self._complete(
                self._dialect(endpoint), raw, authorization, observation, options or {}
            )
            observation.response_body = result.body.decode("utf-8", "replace")
            return result
        except BaseException as error:
            observation.status = outcome_of(error)
            raise
        finally:
            self._observer.end(observation)

    async def _complete(
        self,
        dialect: Dialect,
        raw: bytes,
        authorization: str | None,
        observation: Observation,
        options: Mapping[str, str],
    ) -> UnaryResult:
        admitted = await self._admit(dialect, raw, authorization, observation, options)
        request, model = admitted.request, admitted.model
        try:
            (exchange, reply), ticket = await self._forward(admitted.target, request)
            observation.deployment = ticket.deployment.name
            answer = exchange.answer(reply)
        except BaseException as error:
            self._abandon(admitted, error)
            raise
        usage = answer.usage or TokenUsage(
            request.prompt_tokens_estimate,
            tokens.count_tokens(answer.output_text()),
            estimated=True,
        )
        charge = admitted.reservation.capped(charge_for(model, usage, ticket.deployment))
        observation.charge = charge
        await self._metering.landed(self._finish(admitted, ticket, charge))
        return UnaryResult(answer.render(charge), charge, admitted.admission.snapshot)

    async def count_tokens(
        self,
        raw: bytes,
        authorization: str | None,
        request_id: str,
        options: Mapping[str, str] | None = None,
    ) -> bytes:
        """Anthropic's count_tokens: free, and under no account limit; asked of a deployment
        that counts natively (with failover), else counted by Kyma."""
        observation = self._observer.begin("messages.count_tokens", request_id, raw, stream=False)
        try:
            dialect = self._counting
            if dialect is None:
                raise InvalidRequest("Kyma does not count tokens here.")
            principal, request, model = await self._read(
                dialect, raw, authorization, observation, options or {}
            )
            if not any(d.speaks(dialect.upstream) for d in model.deployments):
                body = dialect.count_locally(request)
            else:
                target = _Target(model, principal.account_id, dialect, 0, native_only=True)
                (exchange, reply), ticket = await self._forward(target, request)
                self._gate.leave(model, ticket, 0)
                observation.deployment = ticket.deployment.name
                body = exchange.answer(reply).render(charge_for(model, TokenUsage(0, 0)))
            observation.response_body = body.decode("utf-8", "replace")
            return body
        except BaseException as error:
            observation.status = outcome_of(error)
            raise
        finally:
            self._observer.end(observation)

    async def _failover(
        self, target: _Target, attempt: Callable[[Deployment], Awaitable[T]]
    ) -> tuple[T, Ticket]:
        """The one failover loop, for unary and streaming calls alike: `attempt` each
        deployment in routing order until one gives an answer. A retryable UpstreamFailure
        moves on to the next deployment (and counts against the failing one's health); one
        that is not retryable means the upstream refused the request itself, so it goes back
        to the client and the deployment counts as healthy."""
        model = target.model
        failure: UpstreamFailure | None = None
        async with aclosing(self._tries(target)) as tries:
            async for tried in tries:
                ticket, health = tried.ticket, tried.attempt
                target.forwarded = True
                try:
                    result = await attempt(ticket.deployment)
                except UpstreamFailure as exc:
                    self._gate.leave(model, ticket, 0)
                    if not exc.retryable:
                        health.succeeded()
                        raise exc.error from None
                    health.failed(exc.error.message, retry_after=exc.retry_after)
                    self._observer.upstream_failed(model.name, ticket.deployment.name)
                    failure = exc
                    continue
                except BaseException:
                    self._gate.leave(model, ticket, 0)
                    health.abandoned()
                    raise
                # Its latency is the time to the answer (a stream's: to its first chunk).
                health.succeeded()
                return result, ticket
        if failure is None:
            raise UpstreamUnavailable(f"No upstream of '{model.name}' could be tried.")
        raise failure.error

    async def _forward(
        self, target: _Target, request: InferenceRequest
    ) -> tuple[tuple[Exchange, bytes], Ticket]:
        dialect = target.dialect

        async def post(deployment: Deployment) -> tuple[Exchange, bytes]:
            exchange = dialect.exchange(request, deployment, target.model)
            reply = await self._upstream.post(
                deployment, exchange.path, exchange.body, headers=exchange.headers
            )
            return exchange, reply

        return await self._failover(target, post)

    async def stream(
        self,
        endpoint: Endpoint,
        raw: bytes,
        authorization: str | None,
        request_id: str,
        options: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[StreamChunks | StreamEnd, None]:
        """Events as the client should get them, then one StreamEnd (with the last events). Failover happens until the
        first event exists; after that an upstream failure ends the stream in the client's
        dialect and is raised as a KymaError. However the stream ends (completed, broken, or
        the client gone), the hold is settled for what was relayed."""
        observation = self._observer.begin(endpoint, request_id, raw, stream=True)
        try:
            # aclosing: if the consumer stops early, the inner stream's settlement runs now,
            # not whenever the garbage collector finalizes it.
            async with aclosing(
                self._stream(
                    self._dialect(endpoint), raw, authorization, observation, options or {}
                )
            ) as events:
                async for event in events:
                    if event.data:
                        self._observer.first_chunk(observation)
                    yield event
        except BaseException as error:
            observation.status = outcome_of(error)
            raise
        finally:
            self._observer.end(observation)

    async def _stream(
        self,
        dialect: Dialect,
        raw: bytes,
        authorization: str | None,
        observation: Observation,
        options: Mapping[str, str],
    ) -> AsyncGenerator[StreamChunks | StreamEnd, None]:
        admitted = await self._admit(dialect, raw, authorization, observation, options)
        model = admitted.model
        try:
            opened, ticket = await self._open_with_failover(admitted)
        except BaseException as error:
            self._abandon(admitted, error)
            raise
        observation.deployment = ticket.deployment.name
        relay = opened.relay
        limits: RateLimitSnapshot | None = admitted.admission.snapshot
        complete = False
        failure: KymaError | None = None
        settled: asyncio.Future[int | None] | None = None
        last_checkpoint = self._clock.monotonic()
        try:
            if opened.first:
                yield StreamChunks(opened.first, limits)
                limits = None
            async for batch in opened.events:
                if relay.cut:
                    break  # the upstream wrote past what was held: the client gets no more
                chunks = relay.rewrite_all(batch)
                if chunks:
                    yield StreamChunks(chunks)
                    now = self._clock.monotonic()
                    if now - last_checkpoint >= CHECKPOINT_SECONDS:
                        # If this node dies, its hold is settled at what was delivered by now.
                        last_checkpoint = now
                        admitted.reservation.checkpoint(
                            charge_for(model, relay.usage(complete=False), ticket.deployment)
                        )
                if relay.cut:
                    break
            complete = not relay.cut
        except UpstreamFailure as exc:
            failure = exc.error
        except UpstreamError as exc:
            failure = exc
        finally:
            await opened.stream.aclose()
            # Also reached when the client goes away: usage then is what was relayed.
            charge = admitted.reservation.capped(
                charge_for(model, relay.usage(complete=complete), ticket.deployment)
            )
            observation.charge = charge
            # What was delivered, should the client be gone; the final answer replaces it.
            observation.response_body = relay.logged()
            settled = self._finish(admitted, ticket, charge)
        # The stream's end (its usage, its charge) goes out once the charge is committed.
        await self._metering.landed(settled)
        if failure is not None:
            ending = relay.failed(charge, failure)
            observation.response_body = relay.logged()
            if ending:
                yield StreamChunks(ending, limits)
            raise failure
        closing = relay.closing(charge, cut=relay.cut)
        observation.response_body = relay.logged()
        yield StreamEnd(charge, limits, closing)

    async def _open_with_failover(self, admitted: _Admitted) -> tuple[_Opened, Ticket]:
        request, dialect = admitted.request, admitted.dialect

        async def open_until_first_chunk(deployment: Deployment) -> _Opened:
            exchange = dialect.exchange(request, deployment, admitted.model)
            relay = exchange.relay()
            stream = await self._upstream.open_stream(
                deployment, exchange.path, exchange.body, headers=exchange.headers
            )
            events = stream.events().__aiter__()
            # Nothing has reached the client until the first chunk: until then, whatever
            # breaks (the connection, an error event, garbage) may be tried elsewhere.
            try:
                while True:
                    try:
                        batch = await anext(events)
                    except StopAsyncIteration:
                        return _Opened(stream, events, [], relay)
                    chunks = relay.rewrite_all(batch)
                    if chunks:
                        return _Opened(stream, events, chunks, relay)
            except UpstreamFailure as exc:
                await stream.aclose()
                raise UpstreamFailure(exc.error, retryable=True) from exc
            except UpstreamError as exc:
                await stream.aclose()
                raise UpstreamFailure(exc, retryable=True) from exc
            except BaseException:
                await stream.aclose()
                raise

        return await self._failover(admitted.target, open_until_first_chunk)


# OpenAI's own limit on `n`.
MAX_CHOICES = 128
# How often a stream records what it has delivered (SPEC §4: at least every second).
CHECKPOINT_SECONDS = 1.0


def outcome_of(error: BaseException) -> str:
    """How a request that did not answer ended, for metrics and the request log."""
    if isinstance(error, KymaError):
        return error.reason
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CLIENT_GONE"
    return "INTERNAL"
