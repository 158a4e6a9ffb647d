"""Running the bridge as a process under uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn

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


def run_bridge(settings: Settings) -> None:
    metrics = BridgeMetrics()
    server = None
    if settings.bridge_metrics_port is not None:
        server = serve_registry(
            metrics.registry,
            settings.bridge_metrics_host,
            settings.bridge_metrics_port,
            setting="KYMA_BRIDGE_METRICS_PORT",
            chosen=settings.chosen("bridge_metrics_port"),
        )
    config = server_config(settings, metrics.middleware(create_app(settings)), loop="uvloop")
    print(f"kyma bridge listening on http://{settings.http_host}:{settings.http_port}", flush=True)
    try:
        uvicorn.Server(config).run()
    finally:
        if server is not None:
            server.stop()
