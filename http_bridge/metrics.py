"""The bridge's Prometheus metrics: HTTP requests by route and status, and their duration,
in a registry of the app's own, served on a port of their own (never the public one)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from http_bridge.console.pages import PAGES
from http_bridge.openapi import OPERATIONS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Routes are counted by template, so ids in paths do not make a label per request: the
# templates are those of the OpenAPI document, which lists every route the bridge serves (the
# bridge does not start if one is missing), so a new route is labelled without being listed here.
_EXACT = frozenset(path for _method, path in OPERATIONS if "{" not in path) | {"/openapi.json"}
# Every template's parameter is its last segment: "/v1/models/{model}" -> ("/v1/models/", ...);
# what follows the prefix may hold slashes (model names do), the label set stays bounded. The
# longest prefix is tried first, so a template under another's prefix is not shadowed by it.
_TEMPLATES = tuple(
    sorted(
        {(path[: path.index("{")], path) for _method, path in OPERATIONS if "{" in path},
        key=lambda pair: -len(pair[0]),
    )
)
# The console's pages are few and fixed; its assets are counted as one route.
_CONSOLE = frozenset(page.path for page in PAGES)


def route_of(path: str) -> str:
    if path in _EXACT or path in _CONSOLE:
        return path
    if path.startswith("/static/"):
        return "/static/{name}"
    for prefix, template in _TEMPLATES:
        if path.startswith(prefix) and path != prefix:
            return template
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
