"""The composition root: builds every part of the core once and passes each its dependencies.

Nothing else in the core constructs an engine, an HTTP client or a service; tests build a Core
with their own settings, clock and upstream transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import httpx
import redis.asyncio
import stripe
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.auth import Authenticator
from core_service.accounts.service import AccountingServicer
from core_service.accounts.signup import SignupFlow, SignupPolicy
from core_service.accounts.signup_service import SignupServicer
from core_service.accounts.store import AccountStore
from core_service.admin.auth import AdminGuard, resolve_admin_token
from core_service.admin.directory import AccountDirectory
from core_service.admin.enforcement import Enforcement
from core_service.admin.service import AdminServicer
from core_service.billing.checkout import CheckoutSessions
from core_service.billing.hold_store import HoldStore
from core_service.billing.holds import Holds
from core_service.billing.ledger import Ledger
from core_service.billing.metering import Metering
from core_service.billing.pricing import usd_to_nanos
from core_service.billing.service import BillingServicer
from core_service.billing.stores import open_hold_store
from core_service.billing.usage import UsageReport
from core_service.billing.webhooks import StripeWebhooks
from core_service.catalog import Catalog, CatalogHolder
from core_service.clock import Clock, SystemClock
from core_service.db.engine import create_engine, migrate, session_factory
from core_service.inference.observer import RequestObserver
from core_service.inference.pipeline import InferencePipeline
from core_service.inference.service import InferenceServicer
from core_service.logs.query import RequestLogQuery
from core_service.logs.retention import LogRetention
from core_service.logs.writer import RequestLogWriter
from core_service.mail.factory import mailer_from_url
from core_service.mail.mailer import Mailer
from core_service.metrics import CoreMetrics, gauge
from core_service.ratelimit.fallback import FallbackRateLimitStore
from core_service.ratelimit.limiter import AccountLimiter, DeploymentGate
from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.redis_store import RedisRateLimitStore
from core_service.ratelimit.service import RateLimitServicer
from core_service.ratelimit.store import RateLimitStore
from core_service.ratelimit.tiers import TierTable
from core_service.referrals.program import ReferralPolicy, ReferralProgram
from core_service.routing.budget import RetryBudget
from core_service.routing.health import BreakerPolicy
from core_service.routing.prober import Prober
from core_service.routing.router import Router
from core_service.routing.service import RoutingServicer
from core_service.settings import Settings
from core_service.tasks import BackgroundTasks
from core_service.upstream.aiohttp_transport import AiohttpTransport
from core_service.upstream.client import UpstreamClient
from core_service.upstream.demo import DemoTransport
from core_service.upstream.transports import UpstreamTransports
from kyma.accounting.v1 import (
    accounting_service_pb2,
    accounting_service_pb2_grpc,
    signup_service_pb2,
    signup_service_pb2_grpc,
)
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from kyma.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from kyma.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from kyma.ratelimit.v1 import ratelimit_service_pb2_grpc
from kyma.routing.v1 import routing_service_pb2, routing_service_pb2_grpc

log = logging.getLogger(__name__)

# Large enough for the biggest body the bridge accepts, with room for the envelope.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

HOLD_EXPIRY_INTERVAL_SECONDS = 10.0
LOG_MAINTENANCE_INTERVAL_SECONDS = 3600.0
DATABASE_CHECK_INTERVAL_SECONDS = 1.0
DATABASE_CHECK_TIMEOUT_SECONDS = 2.0
LIMITER_REPORT_INTERVAL_SECONDS = 0.5
RATELIMIT_SERVICE = "kyma.ratelimit.v1.RateLimitService"
# A health entry of its own: SERVING while limits are shared through Redis, NOT_SERVING while
# this node counts on its own (no Redis configured, or Redis unreachable).
SHARED_LIMITS_HEALTH = "kyma.ratelimit.shared"

_SERVICES = [
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name,
    accounting_service_pb2.DESCRIPTOR.services_by_name["AccountingService"].full_name,
    signup_service_pb2.DESCRIPTOR.services_by_name["SignupService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    RATELIMIT_SERVICE,
]


def build_upstream_transports(
    settings: Settings, transport: httpx.AsyncBaseTransport | None
) -> UpstreamTransports:
    """One pooled transport for every upstream, and the demo model in process. Proxy variables
    in the environment play no part: where requests go is the catalogue's business alone."""
    demo = DemoTransport(tokens_per_second=settings.demo_tokens_per_second)
    if transport is not None:
        return UpstreamTransports(transport, demo=demo)
    streaming = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500),
        retries=0,
        trust_env=False,
    )
    return UpstreamTransports(
        AiohttpTransport(max_connections=2000), streaming=streaming, demo=demo
    )


async def _periodically(interval: float, work, name: str) -> None:  # type: ignore[no-untyped-def]
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except Exception:
            log.exception("%s failed; trying again in %.0fs", name, interval)


async def build_rate_limit_store(settings: Settings, clock: Clock) -> RateLimitStore:
    """In-process on one node; with Redis, shared by every node and falling back to per-node
    limits (limit ÷ expected nodes) while Redis is unreachable."""
    local = InProcessRateLimitStore(clock)
    if settings.redis_url is None:
        return local
    timeout = settings.redis_timeout_ms / 1000
    # A full pool waits (within the timeout) instead of failing, so a burst is not mistaken
    # for Redis being down.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=200,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    return FallbackRateLimitStore(
        RedisRateLimitStore(client, clock, key_prefix=settings.redis_key_prefix),
        local,
        clock,
        node_share=settings.expected_nodes,
        timeout_s=timeout,
    )


def _shares_limits(store: RateLimitStore) -> bool:
    return isinstance(store, FallbackRateLimitStore) and not store.degraded


def build_stripe_client(
    settings: Settings,
) -> tuple[stripe.HTTPXClient | None, stripe.StripeClient | None]:
    """The Stripe client (async, on its own HTTP client), or none when purchases are off."""
    if settings.stripe_secret_key is None:
        return None, None
    http = stripe.HTTPXClient(timeout=20)
    client = stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base},
        http_client=http,
        max_network_retries=2,
    )
    return http, client


@dataclass
class Core:
    """A built core: start() serves it on a port, stop() drains and closes everything."""

    settings: Settings
    engine: AsyncEngine
    upstreams: UpstreamTransports
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    tasks: BackgroundTasks
    holds: Holds
    hold_store: HoldStore
    limits_store: RateLimitStore
    limiter: AccountLimiter
    mailer: Mailer
    router: Router
    catalogue: CatalogHolder
    prober: Prober
    referrals: ReferralProgram
    metrics: CoreMetrics
    request_log: RequestLogWriter
    retention: LogRetention
    ledger: Ledger
    stripe_http: stripe.HTTPXClient | None = None
    port: int = 0
    metrics_port: int = 0
    _stopped: bool = field(default=False, repr=False)
    _chores: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    async def start(self) -> int:
        await self.retention.ensure_partitions()
        await self.request_log.start()
        self._watch_state()
        if self.settings.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(
                    self.settings.metrics_host, self.settings.metrics_port
                )
            except OSError as exc:
                # Serving requests matters more than being scraped: say so, and go on.
                log.error(
                    "no metrics: cannot listen on %s:%s (%s); set KYMA_METRICS_PORT to a free port",
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    exc.strerror,
                )
        await self.server.start()
        self._chores.append(asyncio.create_task(self._expire_holds(), name="expire holds"))
        self._chores.append(asyncio.create_task(self._maintain_logs(), name="log retention"))
        self._chores.append(asyncio.create_task(self._watch_database(), name="database health"))
        self._chores.append(
            asyncio.create_task(
                _periodically(
                    self.settings.probe_interval_seconds, self.prober.probe_due, "probes"
                ),
                name="probe deployments",
            )
        )
        self._chores.append(
            asyncio.create_task(
                _periodically(
                    self.settings.referral_check_interval_seconds,
                    self.referrals.verify_due,
                    "referrals",
                ),
                name="verify referrals",
            )
        )
        await self.health.set(SHARED_LIMITS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.redis_url is not None:
            self._chores.append(asyncio.create_task(self._report_limiter(), name="limiter health"))
        for name in (*_SERVICES, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("core serving gRPC on %s:%d", self.settings.grpc_host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.server.stop(grace)
        for chore in self._chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        # Settlements of the requests that just finished must land before the engine closes,
        # and so must their log rows.
        await self.tasks.drain(timeout=max(grace, 5.0))
        await self.request_log.stop(timeout=max(grace, 5.0))
        self.metrics.stop()
        await self.upstreams.aclose()
        if self.stripe_http is not None:
            await self.stripe_http.close_async()
        await self.hold_store.close()
        await self.limits_store.close()
        await self.mailer.close()
        await self.engine.dispose()

    async def _report_limiter(self) -> None:
        """Keep SHARED_LIMITS_HEALTH in step with the limiter (requests are served either way)."""
        shared: bool | None = None
        while True:
            if self.limiter.shared != shared:
                shared = self.limiter.shared
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if shared
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set(SHARED_LIMITS_HEALTH, status)
            await asyncio.sleep(LIMITER_REPORT_INTERVAL_SECONDS)

    def _watch_state(self) -> None:
        """Gauges read at scrape time from the parts that own the state."""
        router, catalogue, log, tasks = self.router, self.catalogue, self.request_log, self.tasks
        limits, limiter = self.limits_store, self.limiter
        states = {"closed": 0, "half_open": 1, "open": 2}

        def read():  # type: ignore[no-untyped-def]
            statuses = router.status(catalogue.models())
            yield gauge(
                "kyma_breaker_state",
                "0 closed, 1 half-open, 2 open",
                ["model", "deployment"],
                (([s.model, s.deployment], states[s.state.value]) for s in statuses),
            )
            yield gauge(
                "kyma_ratelimit_shared",
                "1 while limits are counted in Redis",
                [],
                [([], float(limiter.shared))],
            )
            fallbacks = limits.fallbacks if isinstance(limits, FallbackRateLimitStore) else 0
            yield gauge(
                "kyma_ratelimit_local_decisions",
                "Limiter calls served per node (Redis unreachable)",
                [],
                [([], fallbacks)],
            )
            yield gauge(
                "kyma_request_log_pending",
                "Request-log entries waiting to be written",
                [],
                [([], log.pending)],
            )
            yield gauge(
                "kyma_request_log_dropped",
                "Request-log entries dropped (buffer full)",
                [],
                [([], log.dropped)],
            )
            yield gauge(
                "kyma_request_log_written", "Request-log entries written", [], [([], log.written)]
            )
            yield gauge(
                "kyma_background_tasks",
                "Settlements and other work in flight",
                [],
                [([], tasks.pending)],
            )

        self.metrics.watch(read)

    async def _watch_database(self) -> None:
        """The core is SERVING (overall health, and so the bridge's /readyz) only while its
        database answers: without it no request can be admitted or billed."""
        serving: bool | None = None
        while True:
            try:
                async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS):
                    async with self.engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                ok = True
            except Exception:
                ok = False
            if ok != serving:
                serving = ok
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set("", status)
                if not ok:
                    log.error("the database does not answer: reporting NOT_SERVING")
                else:
                    log.info("the database answers: SERVING")
            await asyncio.sleep(DATABASE_CHECK_INTERVAL_SECONDS)

    async def _maintain_logs(self) -> None:
        async def maintain() -> None:
            await self.retention.ensure_partitions(days_ahead=2)
            report = await self.retention.purge()
            if report.rows or report.partitions:
                log.info(
                    "request logs purged before %s: %d rows, partitions %s",
                    report.cutoff,
                    report.rows,
                    report.partitions,
                )

        try:
            await maintain()
        except Exception:
            log.exception("log retention failed; trying again in an hour")
        await _periodically(LOG_MAINTENANCE_INTERVAL_SECONDS, maintain, "log retention")

    async def _expire_holds(self) -> None:
        await _periodically(HOLD_EXPIRY_INTERVAL_SECONDS, self.holds.expire_due, "hold expiry")


async def build_core(
    settings: Settings,
    *,
    clock: Clock | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    catalog: Catalog | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
) -> Core:
    """Build the core from settings; migrations are applied here, before anything serves."""
    clock = clock or SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    environ = os.environ if environ is None else environ
    if catalog is None:
        catalog = Catalog.load(settings.catalog, environ) if settings.catalog else Catalog.builtin()
    catalogue = CatalogHolder(catalog, path=settings.catalog)
    engine = create_engine(settings.sqlalchemy_url)
    await migrate(engine)
    sessions = session_factory(engine)
    upstreams = build_upstream_transports(settings, upstream_transport)

    referrals = ReferralProgram(
        engine,
        clock,
        ReferralPolicy(
            enabled=settings.referrals_enabled,
            tokens_required=settings.referral_tokens_required,
            reward_nanos=usd_to_nanos(settings.referral_reward_usd),
            link_base=settings.public_base_url,
        ),
    )
    store = AccountStore(
        sessions,
        clock,
        welcome_bonus_nanos=usd_to_nanos(settings.welcome_bonus_usd),
        referrals=referrals,
    )
    tiers = TierTable(settings.tiers)
    tasks = BackgroundTasks()
    authenticator = Authenticator(
        store, clock, tiers, cache_seconds=settings.key_cache_seconds, tasks=tasks
    )
    longest = max(d.timeouts.total for m in catalog.models() for d in m.deployments)
    hold_store = await open_hold_store(settings.sqlalchemy_url)
    holds = Holds(
        hold_store, engine, clock, ttl_seconds=max(settings.hold_ttl_seconds, longest + 60)
    )
    ledger = Ledger(engine, clock)
    limits_store = await build_rate_limit_store(settings, clock)
    metrics = CoreMetrics()
    request_log = RequestLogWriter(engine, clock, capacity=settings.log_buffer_capacity)
    retention = LogRetention(engine, clock, days=settings.log_retention_days)
    router = Router(
        rng or random.Random(),
        clock,
        policy=BreakerPolicy(
            failures_to_open=settings.breaker_failures_to_open,
            base_cooldown=settings.breaker_cooldown_seconds,
            max_cooldown=settings.breaker_max_cooldown_seconds,
        ),
        budget=RetryBudget(clock, ratio=settings.retry_budget_ratio),
        max_attempts=settings.max_attempts_per_request,
    )
    limiter = AccountLimiter(limits_store, tasks, shared=lambda: _shares_limits(limits_store))
    pipeline = InferencePipeline(
        authenticator=authenticator,
        catalog=catalogue,
        router=router,
        upstream=UpstreamClient(upstreams),
        metering=Metering(
            holds, tasks, counted=lambda outcome: metrics.holds.labels(outcome).inc()
        ),
        limiter=limiter,
        gate=DeploymentGate(limits_store, tasks),
        clock=clock,
        observer=RequestObserver(metrics, clock, request_log),
    )
    guard = AdminGuard(SecretStr(resolve_admin_token(settings)))
    enforcement = Enforcement(engine, clock)
    mailer = mailer_from_url(
        settings.mail_url, sender=settings.mail_sender, logger=logging.getLogger("kyma.mail")
    )
    signup = SignupFlow(
        engine,
        store,
        mailer,
        limits_store,
        clock,
        SignupPolicy(
            code_ttl=timedelta(seconds=settings.signup_code_ttl_seconds),
            max_attempts=settings.signup_max_attempts,
            requests_per_ip_per_minute=settings.signups_per_ip_per_minute,
            requests_per_email_per_minute=settings.signups_per_email_per_minute,
            verifications_per_ip_per_minute=settings.verifications_per_ip_per_minute,
        ),
        referrals,
    )
    stripe_http, stripe_client = build_stripe_client(settings)
    checkout = CheckoutSessions(
        stripe_client,
        success_url=settings.checkout_success_url,
        cancel_url=settings.checkout_cancel_url,
        min_usd=settings.checkout_min_usd,
        max_usd=settings.checkout_max_usd,
    )
    secret = settings.stripe_webhook_secret
    webhooks = StripeWebhooks(
        engine, clock, webhook_secret=secret.get_secret_value() if secret else None
    )

    server = grpc.aio.server(options=GRPC_OPTIONS)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
        InferenceServicer(pipeline), server
    )
    routing_service_pb2_grpc.add_RoutingServiceServicer_to_server(
        RoutingServicer(authenticator, catalogue), server
    )
    accounting_service_pb2_grpc.add_AccountingServiceServicer_to_server(
        AccountingServicer(
            authenticator, store, ledger, UsageReport(engine, clock), enforcement, clock, referrals
        ),
        server,
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            guard,
            store,
            ledger,
            engine,
            clock,
            authenticator=authenticator,
            limiter=limiter,
            tiers=tiers,
            enforcement=enforcement,
            directory=AccountDirectory(engine),
            router=router,
            catalogue=catalogue,
            referrals=referrals,
            log_query=RequestLogQuery(engine),
            retention=retention,
        ),
        server,
    )
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(authenticator, store, checkout, webhooks, clock=clock), server
    )
    ratelimit_service_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitServicer(authenticator, limiter), server
    )
    signup_service_pb2_grpc.add_SignupServiceServicer_to_server(SignupServicer(signup), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    return Core(
        settings=settings,
        engine=engine,
        upstreams=upstreams,
        server=server,
        health=health_servicer,
        tasks=tasks,
        holds=holds,
        hold_store=hold_store,
        limits_store=limits_store,
        limiter=limiter,
        mailer=mailer,
        router=router,
        catalogue=catalogue,
        prober=Prober(router, catalogue, upstreams),
        referrals=referrals,
        metrics=metrics,
        request_log=request_log,
        retention=retention,
        ledger=ledger,
        stripe_http=stripe_http,
        port=port,
    )
