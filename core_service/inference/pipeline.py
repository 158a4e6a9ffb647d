"""The path of one inference request through the core: authenticate, read the request, admit it
under the account's rate limits, hold its worst-case cost, pick deployments with room, forward
with failover before the first byte, relay, then settle the hold and true up the token count.

Both the unary and the streaming path live here so the HTTP bridge and direct gRPC callers get
exactly the same policy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

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
from core_service.inference.costs import priced_response
from core_service.inference.observer import Observation, RequestObserver
from core_service.inference.requests import UPSTREAM_PATHS, parse_request
from core_service.inference.streams import StreamRelay
from core_service.inference.usage import usage_from_upstream
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
    """Chunks for the client, in order (those that arrived from the upstream together)."""

    data: list[bytes]
    limits: RateLimitSnapshot | None = None  # on the first event only


@dataclass(frozen=True)
class StreamEnd:
    charge: Charge
    limits: RateLimitSnapshot | None = None  # when the stream had no chunk before it


@dataclass(frozen=True)
class _Try:
    """One deployment's turn: its place in the upstream limits and its health report."""

    ticket: Ticket
    attempt: Attempt


@dataclass(frozen=True)
class _Opened:
    """An upstream stream that has produced its first chunks (or ended without any)."""

    stream: UpstreamStream
    events: AsyncIterator[list[bytes]]
    first: list[bytes]


@dataclass
class _Admitted:
    principal: Principal
    request: InferenceRequest
    model: Model
    admission: Admission
    reservation: Reservation
    # Tokens counted at admission: the prompt estimate plus the output the request allows.
    tokens: int
    # Whether any upstream was sent the request (until then, it has used nothing at all).
    forwarded: bool = False


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
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._authenticator = authenticator
        self._catalog = catalog
        self._router = router
        self._upstream = upstream
        self._metering = metering
        self._limiter = limiter
        self._gate = gate

    async def _admit(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, observation: Observation
    ) -> _Admitted:
        principal = await self._authenticator.authenticate(authorization)
        observation.principal = principal
        check_in_good_standing(principal, self._clock.now())
        request = parse_request(endpoint, raw, stream=observation.stream)
        model = self._catalog.get(request.model)
        observation.model = model.name
        allowed = principal.key_limits.allowed_models
        if allowed is not None and model.name not in allowed:
            raise ModelNotAllowed(
                f"This API key may not use the model '{model.name}': its owner allowed only "
                f"{', '.join(sorted(allowed))}.",
                param="model",
            )
        if endpoint not in model.endpoints:
            raise InvalidRequest(
                f"The model '{model.name}' does not support the {endpoint} endpoint.",
                param="model",
            )
        if request.choices > MAX_CHOICES:
            raise InvalidRequest(f"'n' is at most {MAX_CHOICES}.", param="n")
        if (
            request.max_output_tokens is not None
            and request.max_output_tokens > model.context_window
        ):
            raise InvalidRequest(
                f"max_tokens × n ({request.max_output_tokens}) is more than '{model.name}' can write "
                f"(its context window is {model.context_window} tokens).",
                param="max_tokens",
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
        return _Admitted(principal, request, model, admission, reservation, counted)

    def _abandon(self, admitted: _Admitted, error: BaseException) -> None:
        """The request ends before any usage: release its hold. If no upstream was sent it
        (Kyma refused it, or its client left first), it consumes no rate limit either;
        otherwise it counts as a request that used no tokens."""
        admitted.reservation.release()
        if not admitted.forwarded or isinstance(error, RateLimited):
            self._limiter.give_back(admitted.admission)
        else:
            self._limiter.true_up(admitted.admission, 0)

    def _finish(self, admitted: _Admitted, ticket: Ticket, charge: Charge) -> None:
        admitted.reservation.settle(charge)
        used = charge.usage.total_tokens
        self._limiter.true_up(admitted.admission, used)
        self._gate.leave(admitted.model, ticket, used)

    @staticmethod
    def _upstream_body(request: InferenceRequest, deployment: Deployment, model: Model) -> bytes:
        """The client's body as the deployment reads it: its model name, the output limit in
        the parameter it reads — always one: the client's, or the model's cap, which is what
        the hold covers (an upstream's own default might be more) — and, for a stream, usage
        asked for whatever the client asked."""
        body: dict[str, Any] = dict(request.body)
        body["model"] = deployment.model
        if request.endpoint != "embeddings":
            per_choice = body.pop("max_completion_tokens", None) or body.pop("max_tokens", None)
            body.pop("max_tokens", None)
            body[deployment.output_limit_param] = per_choice or model.max_output_tokens
        if request.stream:
            body["stream"] = True
            # Usage is what the request is billed by: ask for it whatever the client asked.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def _tries(self, admitted: _Admitted) -> AsyncGenerator[_Try, None]:
        """Tries of the model's deployments in routing order: healthy ones only, skipping those
        at capacity, each after the first paid from the retry budget. When capacity alone
        stopped every try, RateLimited with the soonest time one may have room."""
        model = admitted.model
        waits: list[int] = []
        tried = False
        account = admitted.principal.account_id
        for deployment in self._router.plan(model, account):
            if tried and not self._router.may_retry():
                break
            ticket = await self._gate.enter(model, deployment, admitted.tokens)
            if isinstance(ticket, int):
                waits.append(ticket)
                continue
            tried = True
            yield _Try(ticket, self._router.start(model, deployment, account=account))
        if not tried:
            raise RateLimited(
                f"Every upstream of '{model.name}' is at capacity. Retry shortly.",
                retry_after_seconds=max(1, min(waits, default=1)),
            )

    async def complete(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str
    ) -> UnaryResult:
        observation = self._observer.begin(endpoint, request_id, raw, stream=False)
        try:
            result = await self._complete(endpoint, raw, authorization, observation)
            observation.response_body = result.body.decode("utf-8", "replace")
            return result
        except BaseException as error:
            observation.status = outcome_of(error)
            raise
        finally:
            self._observer.end(observation)

    async def _complete(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, observation: Observation
    ) -> UnaryResult:
        admitted = await self._admit(endpoint, raw, authorization, observation)
        request, model = admitted.request, admitted.model
        try:
            reply, ticket = await self._forward(admitted)
            observation.deployment = ticket.deployment.name
            parsed = _json_object(reply)
        except BaseException as error:
            self._abandon(admitted, error)
            raise
        parsed["model"] = model.name
        usage = usage_from_upstream(parsed.get("usage")) or _estimate(request, parsed)
        charge = admitted.reservation.capped(charge_for(model, usage, ticket.deployment))
        observation.charge = charge
        self._finish(admitted, ticket, charge)
        priced_response(parsed, charge, completion=request.endpoint != "embeddings")
        return UnaryResult(orjson.dumps(parsed), charge, admitted.admission.snapshot)

    async def _failover(
        self, admitted: _Admitted, attempt: Callable[[Deployment], Awaitable[T]]
    ) -> tuple[T, Ticket]:
        """The one failover loop, for unary and streaming calls alike: `attempt` each
        deployment in routing order until one gives an answer. A retryable UpstreamFailure
        moves on to the next deployment (and counts against the failing one's health); one
        that is not retryable means the upstream refused the request itself, so it goes back
        to the client and the deployment counts as healthy."""
        model = admitted.model
        failure: UpstreamFailure | None = None
        async with aclosing(self._tries(admitted)) as tries:
            async for tried in tries:
                ticket, health = tried.ticket, tried.attempt
                admitted.forwarded = True
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

    async def _forward(self, admitted: _Admitted) -> tuple[bytes, Ticket]:
        request = admitted.request
        path = UPSTREAM_PATHS[request.endpoint]

        async def post(deployment: Deployment) -> bytes:
            return await self._upstream.post(
                deployment, path, self._upstream_body(request, deployment, admitted.model)
            )

        return await self._failover(admitted, post)

    async def stream(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str
    ) -> AsyncGenerator[StreamChunks | StreamEnd, None]:
        """Chunks as the client should get them, then one StreamEnd. Failover happens until the
        first chunk exists; after that an upstream failure is raised as a KymaError. However the
        stream ends (completed, broken, or the client gone), the hold is settled for what was
        relayed."""
        observation = self._observer.begin(endpoint, request_id, raw, stream=True)
        try:
            # aclosing: if the consumer stops early, the inner stream's settlement runs now,
            # not whenever the garbage collector finalizes it.
            async with aclosing(self._stream(endpoint, raw, authorization, observation)) as events:
                async for event in events:
                    if isinstance(event, StreamChunks):
                        self._observer.first_chunk(observation)
                    yield event
        except BaseException as error:
            observation.status = outcome_of(error)
            raise
        finally:
            self._observer.end(observation)

    async def _stream(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, observation: Observation
    ) -> AsyncGenerator[StreamChunks | StreamEnd, None]:
        admitted = await self._admit(endpoint, raw, authorization, observation)
        model = admitted.model
        relay = StreamRelay(
            public_model=model.name,
            include_usage=admitted.request.include_usage,
            prompt_estimate=admitted.request.prompt_tokens_estimate,
            output_limit=output_tokens_to_hold(admitted.request, model),
        )
        try:
            opened, ticket = await self._open_with_failover(admitted, relay)
        except BaseException as error:
            self._abandon(admitted, error)
            raise
        observation.deployment = ticket.deployment.name
        limits: RateLimitSnapshot | None = admitted.admission.snapshot
        complete = False
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
            raise exc.error from None
        finally:
            await opened.stream.aclose()
            # Also reached when the client goes away: usage then is what was relayed.
            charge = admitted.reservation.capped(
                charge_for(model, relay.usage(complete=complete), ticket.deployment)
            )
            observation.charge = charge
            observation.response_body = relay.delivered_text()
            self._finish(admitted, ticket, charge)
        closing = relay.closing_chunks(charge, cut=relay.cut)
        if closing:
            yield StreamChunks(closing, limits)
            limits = None
        yield StreamEnd(charge, limits)

    async def _open_with_failover(
        self, admitted: _Admitted, relay: StreamRelay
    ) -> tuple[_Opened, Ticket]:
        request = admitted.request
        path = UPSTREAM_PATHS[request.endpoint]

        async def open_until_first_chunk(deployment: Deployment) -> _Opened:
            stream = await self._upstream.open_stream(
                deployment, path, self._upstream_body(request, deployment, admitted.model)
            )
            events = stream.events().__aiter__()
            # Nothing has reached the client until the first chunk: until then, whatever
            # breaks (the connection, an error event, garbage) may be tried elsewhere.
            try:
                while True:
                    try:
                        batch = await anext(events)
                    except StopAsyncIteration:
                        return _Opened(stream, events, [])
                    chunks = relay.rewrite_all(batch)
                    if chunks:
                        return _Opened(stream, events, chunks)
            except UpstreamFailure as exc:
                await stream.aclose()
                raise UpstreamFailure(exc.error, retryable=True) from exc
            except UpstreamError as exc:
                await stream.aclose()
                raise UpstreamFailure(exc, retryable=True) from exc
            except BaseException:
                await stream.aclose()
                raise

        return await self._failover(admitted, open_until_first_chunk)


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


def _json_object(reply: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        # Some servers write NaN or Infinity (not JSON, but the stdlib reads them); the answer
        # is still worth relaying, and usage that is not a whole number is estimated anyway.
        try:
            parsed = json.loads(reply)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError("The model's upstream sent a malformed response.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError("The model's upstream sent a malformed response.")
    return parsed


def _estimate(request: InferenceRequest, response: dict[str, Any]) -> TokenUsage:
    text: list[str] = []
    for choice in response.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(content, str):
                text.append(content)
    return TokenUsage(
        request.prompt_tokens_estimate, tokens.count_tokens("".join(text)), estimated=True
    )
