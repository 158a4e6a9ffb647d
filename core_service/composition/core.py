"""`build_core`: the core from its settings, subsystem by subsystem on one exit stack; `Core`:
start serving it, and stop (drain, then close everything in reverse order of opening)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any

import httpx
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.holds import Holds
from core_service.billing.ledger import Ledger
from core_service.catalog import Catalog, CatalogHolder
from core_service.clock import Clock, SystemClock
from core_service.composition import chores
from core_service.composition.accounts import Accounts, open_accounts
from core_service.composition.admin_token import resolve_admin_token
from core_service.composition.billing import Billing, open_billing
from core_service.composition.dialects import open_dialects
from core_service.composition.limits import Limits, open_limits
from core_service.composition.routing import Routing, open_routing
from core_service.composition.server import SERVICES, Server, build_server
from core_service.composition.status import Status, open_status
from core_service.composition.storage import Storage, open_storage
from core_service.inference.observer import RequestObserver
from core_service.inference.pipeline import InferencePipeline
from core_service.logs.responses import StoredResponses
from core_service.logs.writer import RequestLogWriter
from core_service.metrics import CoreMetrics, gauge
from core_service.metrics_server import MetricsServer, serve_registry
from core_service.routing.router import Router
from core_service.settings import Settings
from core_service.tasks import BackgroundTasks
from kyma.contract.v1.constants import SHARED_LIMITS_HEALTH_SERVICE

log = logging.getLogger(__name__)


class Core:
    """A built core. `start()` serves it; `stop()` drains in-flight work and closes all."""

    def __init__(
        self,
        settings: Settings,
        stack: contextlib.AsyncExitStack,
        *,
        tasks: BackgroundTasks,
        metrics: CoreMetrics,
        storage: Storage,
        limits: Limits,
        routing: Routing,
        accounts: Accounts,
        billing: Billing,
        status: Status,
        pipeline: InferencePipeline,
        server: Server,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self.metrics = metrics
        self.storage = storage
        self.limits = limits
        self.routing = routing
        self.accounts = accounts
        self.billing = billing
        self.status = status
        self.pipeline = pipeline
        self.server = server
        self.port = server.port
        self.metrics_port = 0
        self._stack = stack
        self._grace = settings.shutdown_grace_seconds
        self._stopped = False
        self._chores: list[asyncio.Task[None]] = []

    # What tests and the process runner reach for most.
    @property
    def engine(self) -> AsyncEngine:
        return self.storage.engine

    @property
    def ledger(self) -> Ledger:
        return self.storage.ledger

    @property
    def request_log(self) -> RequestLogWriter:
        return self.storage.request_log

    @property
    def holds(self) -> Holds:
        return self.billing.holds

    @property
    def router(self) -> Router:
        return self.routing.router

    @property
    def catalogue(self) -> CatalogHolder:
        return self.routing.catalogue

    async def start(self) -> int:
        stack, health = self._stack, self.server.health
        await self.storage.retention.ensure_partitions()
        await self.storage.request_log.start()
        # Closed in reverse: settlements land, then their log rows, before anything closes.
        stack.push_async_callback(self._flush_log)
        self.storage.writer.start()
        stack.push_async_callback(self._stop_writer)
        await self.storage.lease.register()
        stack.push_async_callback(self._drain_tasks)
        self.metrics.watch(self._gauges)
        self._serve_metrics()
        stack.push_async_callback(self._cancel_chores)
        await self.server.server.start()
        stack.push_async_callback(self._stop_server)
        self._chore(chores.heartbeat(self.storage.lease), "node lease")
        await self.accounts.events.start_from_now()
        self._chore(
            self.accounts.events.follow(
                self.accounts.apply, poll_seconds=self.settings.account_events_poll_seconds
            ),
            "account events",
        )
        self._chore(chores.last_used(self.accounts.flush_last_used), "last use")
        self._chore(
            chores.periodically(
                chores.LOW_BALANCE_INTERVAL_SECONDS,
                self.billing.low_balance.check,
                "low-balance alerts",
            ),
            "low-balance alerts",
        )
        self._chore(chores.expire_holds(self.billing.holds), "expire holds")
        self._chore(chores.prune(self.billing.holds, self.storage.lease, self.settings), "prune")
        self._chore(chores.maintain_logs(self.storage.retention), "log retention")
        self._chore(chores.count_outcomes(self.status.outcomes), "request outcomes")
        self._chore(
            chores.watch_database(self.storage.reads, health, self.server.relay.serving),
            "database health",
        )
        self._chore(
            chores.periodically(
                self.settings.probe_interval_seconds, self.routing.prober.probe_due, "probes"
            ),
            "probe deployments",
        )
        self._chore(
            chores.periodically(
                self.settings.referral_check_interval_seconds,
                self.accounts.referrals.verify_due,
                "referrals",
            ),
            "verify referrals",
        )
        # Only a core that shares its limits through Redis has the entry; without Redis it is
        # absent (NOT_FOUND): the limits are this machine's by design, not degraded.
        if self.settings.redis_url is not None:
            await health.set(SHARED_LIMITS_HEALTH_SERVICE, chores.NOT_SERVING)
            self._chore(chores.report_limiter(self.limits.limiter, health), "limiter health")
        for name in (*SERVICES, ""):
            await health.set(name, chores.SERVING)
        log.info("core serving gRPC on %s:%d", self.settings.grpc_host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if grace is not None:
            self._grace = grace
        await self._stack.aclose()

    def _chore(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._chores.append(asyncio.create_task(work, name=name))

    async def _cancel_chores(self) -> None:
        for chore in self._chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore

    def _serve_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        served: MetricsServer | None = serve_registry(
            self.metrics.registry,
            self.settings.metrics_host,
            self.settings.metrics_port,
            setting="KYMA_METRICS_PORT",
            chosen=self.settings.chosen("metrics_port"),
        )
        if served is not None:
            self.metrics_port = served.port
            self._stack.callback(served.stop)

    async def _stop_server(self) -> None:
        await self.server.health.enter_graceful_shutdown()
        self.server.relay.drain()
        await self.server.server.stop(self._grace)

    async def _drain_tasks(self) -> None:
        # Rate-limit true-ups of the requests that just finished.
        await self.tasks.drain(timeout=max(self._grace, 5.0))

    async def _stop_writer(self) -> None:
        # Settlements of the requests that just finished must land before the stores close.
        writer = self.storage.writer
        drained = await writer.drain(timeout=max(self._grace, 5.0))
        await writer.stop(timeout=0)
        if drained:
            with contextlib.suppress(Exception):
                await self.storage.lease.leave()

    async def _flush_log(self) -> None:
        await self.storage.request_log.stop(timeout=max(self._grace, 5.0))

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        """Gauges read at scrape time from the parts that own the state."""
        states = {"closed": 0, "half_open": 1, "open": 2}
        statuses = self.router.status(self.catalogue.models())
        yield gauge(
            "kyma_breaker_state",
            "0 closed, 1 half-open, 2 open",
            ["model", "deployment"],
            (([s.model, s.deployment], states[s.state.value]) for s in statuses),
        )
        request_log, writer = self.storage.request_log, self.storage.writer
        scalars: list[tuple[str, str, float]] = [
            (
                "kyma_ratelimit_shared",
                "1 while limits are counted in Redis",
                float(self.limits.limiter.shared),
            ),
            (
                "kyma_ratelimit_local_decisions",
                "Limiter calls served per node (Redis unreachable)",
                self.limits.fallbacks,
            ),
            (
                "kyma_ratelimit_unreconciled",
                "Per-node counts (key, second) Redis has yet to be told of",
                self.limits.unreconciled,
            ),
            (
                "kyma_request_log_pending",
                "Request-log entries waiting to be written",
                request_log.pending,
            ),
            (
                "kyma_request_log_dropped",
                "Request-log entries dropped (buffer full)",
                request_log.dropped,
            ),
            ("kyma_request_log_written", "Request-log entries written", request_log.written),
            (
                "kyma_writer_queue_depth",
                "Holds, settlements and checkpoints waiting for the database writer",
                writer.depth,
            ),
            (
                "kyma_writer_queue_age_seconds",
                "How long the oldest queued write has waited",
                writer.oldest_age,
            ),
            (
                "kyma_writer_batches",
                "Batches the writer committed (one transaction each)",
                writer.stats.batches,
            ),
            ("kyma_writer_operations", "Operations the writer committed", writer.stats.operations),
            (
                "kyma_writer_failures",
                "Batches the database refused (retried)",
                writer.stats.failures,
            ),
            ("kyma_background_tasks", "Settlements and other work in flight", self.tasks.pending),
        ]
        for name, documentation, value in scalars:
            yield gauge(name, documentation, [], [([], value)])


async def build_core(
    settings: Settings,
    *,
    clock: Clock | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    catalog: Catalog | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
) -> Core:
    """Build the core from settings; migrations are applied here, before anything serves. If
    any step fails, what the steps before it opened is closed before the error propagates."""
    clock = clock or SystemClock()
    # The environment as it is at start-up: upstream keys named by api_key_env come from it.
    environ = dict(os.environ if environ is None else environ)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        tasks = BackgroundTasks()
        metrics = CoreMetrics()
        storage = await open_storage(settings, clock, stack)
        limits = await open_limits(settings, clock, tasks, stack)
        routing = open_routing(
            settings,
            clock,
            stack,
            environ=environ,
            catalog=catalog,
            transport=upstream_transport,
            rng=rng,
        )
        accounts = open_accounts(
            settings,
            clock,
            stack,
            engine=storage.engine,
            reads=storage.reads,
            tiers=limits.tiers,
            limits_store=limits.store,
        )
        billing = open_billing(
            settings,
            clock,
            stack,
            storage=storage,
            longest_request_seconds=routing.longest_request_seconds,
            counted=lambda outcome: metrics.holds.labels(outcome).inc(),
            events=accounts.events,
            mailer=accounts.mailer,
        )
        status = open_status(clock, storage=storage, routing=routing)
        stored_responses = StoredResponses(
            storage.engine, storage.reads, storage.request_log, clock
        )
        dialects = open_dialects(clock, stored_responses)
        pipeline = InferencePipeline(
            authenticator=accounts.authenticator,
            catalog=routing.catalogue,
            router=routing.router,
            upstream=routing.upstream,
            metering=billing.metering,
            limiter=limits.limiter,
            gate=limits.gate,
            clock=clock,
            observer=RequestObserver(metrics, clock, storage.request_log, status.outcomes),
            dialects=dialects.by_endpoint,
            counting=dialects.counting,
        )
        server = build_server(
            settings.grpc_host,
            settings.grpc_port,
            clock,
            admin_token=resolve_admin_token(settings),
            pipeline=pipeline,
            storage=storage,
            limits=limits,
            routing=routing,
            accounts=accounts,
            billing=billing,
            status=status,
            public_base_url=settings.public_base_url,
            stored_responses=stored_responses,
        )
        # Built whole: from here the Core owns what the stack holds.
        return Core(
            settings,
            stack.pop_all(),
            tasks=tasks,
            metrics=metrics,
            storage=storage,
            limits=limits,
            routing=routing,
            accounts=accounts,
            billing=billing,
            status=status,
            pipeline=pipeline,
            server=server,
        )
    raise AssertionError("unreachable")  # the stack's context returns or raises
