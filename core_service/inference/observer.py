"""What happened to each inference request, recorded once it ends: Prometheus metrics, its
outcome for the status page (counted in memory), and a row in the request log (written off
the request path, in batches).

An `Observation` is filled in as the request goes (who, which model and deployment, what it
used) and ended exactly once, however the request ends: answered, refused, failed, or the
client gone. The API key itself never gets here, only its id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from core_service.billing.metering import Charge
from core_service.clock import Clock
from core_service.logs.entry import RequestLogEntry
from core_service.metrics import CoreMetrics
from core_service.values import Principal


class LogSink(Protocol):
    def record(self, entry: RequestLogEntry) -> None: ...


@dataclass
class Observation:
    request_id: str
    endpoint: str
    stream: bool
    request_body: bytes
    created_at: datetime
    started: float
    principal: Principal | None = None
    model: str | None = None
    deployment: str | None = None
    status: str = "ok"
    charge: Charge | None = None
    # The request's credit hold, which names its ledger entry.
    hold_id: str | None = None
    ttft: float | None = None
    response_body: str = ""
    # The id the answer is stored under (OpenAI Responses with `store`), and the stored answer
    # it continues.
    stored_id: str | None = None
    continues: str | None = None
    _ended: bool = field(default=False, repr=False)


class OutcomeSink(Protocol):
    def count(self, model: str | None, status: str, at: datetime) -> None: ...


class RequestObserver:
    def __init__(
        self,
        metrics: CoreMetrics,
        clock: Clock,
        log: LogSink | None = None,
        outcomes: OutcomeSink | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._log = log
        # Each model's answered and failed requests, for the status page.
        self._outcomes = outcomes

    def begin(self, endpoint: str, request_id: str, body: bytes, *, stream: bool) -> Observation:
        return Observation(
            request_id=request_id,
            endpoint=endpoint,
            stream=stream,
            request_body=body,
            created_at=self._clock.now(),
            started=self._clock.monotonic(),
        )

    def first_chunk(self, observation: Observation) -> None:
        if observation.ttft is None:
            observation.ttft = self._clock.monotonic() - observation.started

    def upstream_failed(self, model: str, deployment: str) -> None:
        self._metrics.upstream_errors_of(model, deployment).inc()

    def limited(self, admitted: bool) -> None:
        self._metrics.limiter_of("admitted" if admitted else "refused").inc()

    def end(self, observation: Observation) -> None:
        if observation._ended:
            return
        observation._ended = True
        elapsed = self._clock.monotonic() - observation.started
        model = observation.model or "-"
        metrics = self._metrics
        metrics.requests_of(observation.endpoint, model, observation.status).inc()
        metrics.latency_of(observation.endpoint, model).observe(elapsed)
        if observation.ttft is not None:
            metrics.ttft_of(model).observe(observation.ttft)
        charge = observation.charge
        if charge is not None:
            metrics.tokens_of(model, "prompt").inc(charge.usage.prompt_tokens)
            metrics.tokens_of(model, "completion").inc(charge.usage.completion_tokens)
            metrics.cost_of(model).inc(charge.cost_nanos)
        if self._outcomes is not None:
            self._outcomes.count(observation.model, observation.status, observation.created_at)
        if self._log is None:
            return
        principal = observation.principal
        usage = charge.usage if charge else None
        self._log.record(
            RequestLogEntry(
                id=observation.request_id,
                created_at=observation.created_at,
                request_id=observation.request_id,
                account_id=principal.account_id if principal else None,
                key_id=principal.key_id if principal else None,
                endpoint=observation.endpoint,
                model=observation.model or "",
                deployment=observation.deployment or "",
                status=observation.status,
                latency_ms=elapsed * 1000,
                ttft_ms=None if observation.ttft is None else observation.ttft * 1000,
                prompt_tokens=charge.usage.prompt_tokens if charge else 0,
                completion_tokens=charge.usage.completion_tokens if charge else 0,
                cost_nanos=charge.cost_nanos if charge else 0,
                estimated=charge.usage.estimated if charge else False,
                stream=observation.stream,
                request_body=observation.request_body.decode("utf-8", "replace"),
                response_body=observation.response_body,
                cached_tokens=usage.cached_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                hold_id=observation.hold_id,
                response_id=observation.stored_id if observation.status == "ok" else None,
                previous_response_id=observation.continues,
            )
        )
