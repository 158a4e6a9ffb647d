"""Active health checks: deployments whose breaker cool-down has passed are probed with a
cheap `GET /models` (within their connect and first-token timeouts); a success closes the
breaker before any client request has to risk it, a failure opens it again for longer."""

from __future__ import annotations

import asyncio
import logging

import httpx

from core_service.catalog import CatalogHolder
from core_service.routing.router import Router
from core_service.upstream.transports import UpstreamTransports

log = logging.getLogger(__name__)


class Prober:
    def __init__(
        self, router: Router, catalog: CatalogHolder, transports: UpstreamTransports
    ) -> None:
        self._router = router
        self._catalog = catalog
        self._transports = transports

    async def probe_due(self) -> int:
        due = self._router.half_open(self._catalog.models())
        await asyncio.gather(*(self._probe(model, deployment) for model, deployment in due))
        return len(due)

    async def _probe(self, model, deployment) -> None:  # type: ignore[no-untyped-def]
        attempt = self._router.start(model, deployment)
        url = f"{deployment.base_url}/models"
        headers = {}
        if deployment.api_key is not None:
            headers["authorization"] = f"Bearer {deployment.api_key.get_secret_value()}"
        timeouts = deployment.timeouts
        request = httpx.Request(
            "GET",
            url,
            headers=headers,
            extensions={
                "timeout": {
                    "connect": timeouts.connect,
                    "read": timeouts.first_token,
                    "write": timeouts.connect,
                    "pool": timeouts.connect,
                }
            },
        )
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.first_token):
                response = await self._transports.for_url(url, stream=False).handle_async_request(
                    request
                )
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            attempt.failed(f"probe: {type(exc).__name__}")
            return
        if response.status_code >= 500 or response.status_code == 429:
            attempt.failed(f"probe: HTTP {response.status_code}")
        else:
            attempt.succeeded()
            log.info("deployment %s of %s is healthy again", deployment.name, model.name)
