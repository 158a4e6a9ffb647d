"""Running the bridge as a process under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from http_bridge.app import create_app
from http_bridge.metrics import BridgeMetrics
from http_bridge.settings import BridgeSettings


def run_bridge(settings: BridgeSettings) -> None:
    metrics = BridgeMetrics()
    if settings.bridge_metrics_port is not None:
        try:
            metrics.serve(settings.bridge_metrics_host, settings.bridge_metrics_port)
        except OSError as exc:
            logging.getLogger(__name__).error(
                "no metrics: cannot listen on %s:%s (%s); set KYMA_BRIDGE_METRICS_PORT to a free port",
                settings.bridge_metrics_host,
                settings.bridge_metrics_port,
                exc.strerror,
            )
    config = uvicorn.Config(
        metrics.middleware(create_app(settings)),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
        # The client's address (a sign-up signal and limit key) comes through trusted proxies.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    print(f"kyma bridge listening on http://{settings.http_host}:{settings.http_port}", flush=True)
    uvicorn.Server(config).run()
