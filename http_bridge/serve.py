"""Running the bridge as a process under uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from core_service.announce import print_line
from core_service.heap import settle_after_startup
from core_service.metrics_server import serve_registry
from core_service.settings import Settings
from http_bridge.app import create_app
from http_bridge.metrics import BridgeMetrics
from http_bridge.protocol import HttpLimits, bounded_protocol


def server_config(settings: Settings, app: Any, **overrides: Any) -> uvicorn.Config:
    """How the bridge is served (the tests serve it so too, on sockets of their own)."""
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        # HTTP/1.1 through httptools, with bounds on request heads and bodies.
        "http": bounded_protocol(
            HttpLimits(
                max_header_bytes=settings.http_max_header_bytes,
                max_headers=settings.http_max_headers,
                header_timeout=settings.http_header_timeout_seconds,
                body_timeout=settings.http_body_timeout_seconds,
            )
        ),
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_grace_seconds)),
        # The client's address (a sign-up signal and limit key) comes through trusted proxies.
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    return uvicorn.Config(app, **{**options, **overrides})


class _Server(uvicorn.Server):
    """uvicorn's server, which says it listens only once it can serve: after the app's
    start-up (its channel to the cores) has run and the socket is being served."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._announce()


def run_bridge(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve the bridge until SIGTERM/SIGINT, on `sock` (a listening socket several bridge
    workers share) or else on a socket bound here to http_host:http_port; `ready` is called
    once it serves."""
    metrics = BridgeMetrics()
    metrics_server = None
    if settings.bridge_metrics_port is not None:
        metrics_server = serve_registry(
            metrics.registry,
            settings.bridge_metrics_host,
            settings.bridge_metrics_port,
            setting="KYMA_BRIDGE_METRICS_PORT",
            chosen=settings.chosen("bridge_metrics_port"),
        )
    server: _Server | None = None
    # A SIGTERM while the app waits for a core at start-up (uvicorn's handler sets
    # should_exit) ends the wait: a `kyma serve` whose core failed to start stops at once.
    app = create_app(settings, stopping=lambda: server is not None and server.should_exit)
    config = server_config(settings, metrics.middleware(app), loop="uvloop")
    # Bound here rather than by uvicorn so that the line below names the real port (port 0
    # picks a free one, as tests and a second bridge on one machine do).
    if sock is None:
        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        sock = socket.create_server((settings.http_host, settings.http_port), family=family)
    port = sock.getsockname()[1]
    host = f"[{settings.http_host}]" if sock.family == socket.AF_INET6 else settings.http_host

    def announce() -> None:
        settle_after_startup()
        print_line(f"kyma bridge listening on http://{host}:{port}")
        if ready is not None:
            ready()

    server = _Server(config, announce)
    try:
        server.run(sockets=[sock])
    finally:
        if metrics_server is not None:
            metrics_server.stop()
