"""Upstreams and routing: the catalogue, the transports that reach deployments (the demo model
in process), the router with its breakers and retry budget, and the prober."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from core_service.catalog import Catalog, CatalogHolder
from core_service.clock import Clock
from core_service.routing.budget import RetryBudget
from core_service.routing.health import BreakerPolicy
from core_service.routing.prober import Prober
from core_service.routing.router import Router
from core_service.settings import Settings
from core_service.upstream.aiohttp_transport import AiohttpTransport
from core_service.upstream.client import UpstreamClient
from core_service.upstream.demo import DemoTransport
from core_service.upstream.transports import UpstreamTransports


@dataclass(frozen=True)
class Routing:
    catalogue: CatalogHolder
    transports: UpstreamTransports
    upstream: UpstreamClient
    router: Router
    prober: Prober
    # The longest `total` timeout of any deployment: no hold may expire before it.
    longest_request_seconds: float


def _transports(
    settings: Settings, transport: httpx.AsyncBaseTransport | None
) -> UpstreamTransports:
    """One pooled transport for every upstream (whole responses and streams), and the demo
    model in process. Proxy variables in the environment play no part: where requests go is the
    catalogue's business alone."""
    demo = DemoTransport(tokens_per_second=settings.demo_tokens_per_second)
    if transport is not None:
        return UpstreamTransports(transport, demo=demo)
    # As many connections as whole responses and streams had when each had a pool of 2000.
    return UpstreamTransports(AiohttpTransport(max_connections=4000), demo=demo)


def open_routing(
    settings: Settings,
    clock: Clock,
    stack: contextlib.AsyncExitStack,
    *,
    environ: Mapping[str, str],
    catalog: Catalog | None,
    transport: httpx.AsyncBaseTransport | None,
    rng: random.Random | None,
) -> Routing:
    if catalog is None:
        catalog = Catalog.load(settings.catalog, environ) if settings.catalog else Catalog.builtin()
    catalogue = CatalogHolder(catalog, path=settings.catalog, environ=environ)
    transports = _transports(settings, transport)
    stack.push_async_callback(transports.aclose)
    router = Router(
        rng or random.Random(),
        clock,
        policy=BreakerPolicy(
            failures_to_open=settings.breaker_failures_to_open,
            window_seconds=settings.breaker_window_seconds,
            min_accounts=settings.breaker_min_accounts,
            failure_ratio=settings.breaker_failure_ratio,
            base_cooldown=settings.breaker_cooldown_seconds,
            max_cooldown=settings.breaker_max_cooldown_seconds,
        ),
        budget=RetryBudget(clock, ratio=settings.retry_budget_ratio),
        max_attempts=settings.max_attempts_per_request,
        panic_threshold=settings.routing_panic_threshold,
    )
    return Routing(
        catalogue=catalogue,
        transports=transports,
        upstream=UpstreamClient(transports),
        router=router,
        prober=Prober(router, catalogue, transports),
        longest_request_seconds=max(
            d.timeouts.total for m in catalog.models() for d in m.deployments
        ),
    )
