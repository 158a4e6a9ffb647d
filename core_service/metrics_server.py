"""Serving a Prometheus registry on a port of its own (never the public one), for the core and
the bridge alike.

A port left at its default is a preference: when another process holds it (a second Kyma on
the same machine, say), the registry is served on a free port instead and the log says which,
so a second instance needs no more settings than its HTTP and gRPC ports. A port that was
configured is a requirement: if it is taken, the process serves on without metrics and says
so once, loudly (serving requests matters more than being scraped).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class MetricsServer:
    def __init__(self, server: Any) -> None:
        self._server = server
        self.port = int(server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_registry(
    registry: CollectorRegistry, host: str, port: int, *, setting: str, chosen: bool
) -> MetricsServer | None:
    """Serve `registry` on host:port; `setting` names the variable that moves it, `chosen`
    says whether the operator set it."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if chosen or port == 0:
            log.error(
                "no metrics: cannot listen on %s:%s (%s); set %s to a free port",
                host,
                port,
                exc.strerror,
                setting,
            )
            return None
        server, _thread = start_http_server(0, addr=host, registry=registry)
        log.warning(
            "metrics port %s is taken (another Kyma?); serving metrics on %s:%s instead (set %s to choose)",
            port,
            host,
            server.server_port,
            setting,
        )
    return MetricsServer(server)
