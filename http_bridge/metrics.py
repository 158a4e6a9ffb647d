"""The bridge's Prometheus metrics: HTTP requests by route and status, and their duration,
in a registry of the app's own, served on a port of their own (never the public one)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from http_bridge.console.pages import PAGES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Routes are counted by template, so ids in paths do not make a label per request.
_KNOWN = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/account",
        "/v1/account/keys",
        "/v1/account/usage",
        "/v1/account/ledger",
        "/v1/account/referrals",
        "/v1/auth/signup",
        "/v1/auth/verify",
        "/v1/billing/checkout",
        "/v1/billing/stripe/webhook",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }
)


# The console's pages are few and fixed; its assets are counted as one route.
_CONSOLE = frozenset(page.path for page in PAGES)


def route_of(path: str) -> str:
    if path in _KNOWN or path in _CONSOLE:
        return path
    if path.startswith("/static/"):
        return "/static/{name}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/account/keys/"):
        return "/v1/account/keys/{id}"
    return "other"


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kyma_bridge_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kyma_bridge_request_duration_seconds",
            "Time to the response headers",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def middleware(self, app: ASGI) -> ASGI:
        requests, duration = self.requests, self.duration
        # Each label set's series, looked up once (routes and statuses are few: see route_of).
        counted: dict[tuple[str, int], Any] = {}
        timed: dict[str, Any] = {}
        clock = time.perf_counter

        async def measured(
            scope: Scope,
            receive: Callable[[], Awaitable[Message]],
            send: Callable[[Message], Awaitable[None]],
        ) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = clock()
            route = route_of(scope.get("path", ""))

            async def send_measured(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    counter = counted.get((route, status))
                    if counter is None:
                        counter = counted[route, status] = requests.labels(route, str(status))
                    counter.inc()
                    histogram = timed.get(route)
                    if histogram is None:
                        histogram = timed[route] = duration.labels(route)
                    histogram.observe(clock() - started)
                await send(message)

            await app(scope, receive, send_measured)

        return measured
