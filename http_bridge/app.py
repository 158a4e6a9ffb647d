"""The HTTP bridge: OpenAI-compatible HTTP in, one gRPC call on the core out, and back.

It holds no business logic and no database. It reads the body (bounded), checks only that it is
a JSON object and whether it asks to stream, and hands it over unchanged; everything else —
authentication, credits, limits, routing — is the core's.

Browser pages on other origins may call the API with an API key when their origin is in
KYMA_CORS_ALLOWED_ORIGINS (preflights answered here, before any route); never with
credentials, so the console's session cookie is of no use to them (`cookies.py`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from grpc_health.v1 import health_pb2
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core_service.settings import Settings
from http_bridge import account_routes, auth_routes, inference_routes, key_routes, status_routes
from http_bridge.console.pages import console_router
from http_bridge.core_client import (
    CoreStubs,
    core_channel,
    new_request_id,
    stubs,
    wait_for_core,
)
from http_bridge.disconnects import CLIENT_CLOSED_REQUEST, ClientGone, end_quietly
from http_bridge.errors import OpenAIError
from http_bridge.openapi import openapi_document
from http_bridge.relay import InferenceRelay
from kyma.contract.v1.constants import SHARED_LIMITS_HEALTH_SERVICE

log = logging.getLogger(__name__)
_JSON = "application/json"
# What a page on another origin may read of a response (beside the CORS-safelisted ones).
CORS_EXPOSED_HEADERS = [
    "x-request-id",
    "x-kyma-cost",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]


async def _limits(check: grpc.aio.UnaryUnaryMultiCallable) -> str:
    """How the core counts rate limits, from its shared-limits health entry (absent, NOT_FOUND,
    on a core without Redis); any other error is the caller's to handle."""
    try:
        reply = await check(
            health_pb2.HealthCheckRequest(service=SHARED_LIMITS_HEALTH_SERVICE), timeout=2
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return "local"
    return "shared" if reply.status == health_pb2.HealthCheckResponse.SERVING else "per-node"


def create_app(
    settings: Settings,
    *,
    channel: grpc.aio.Channel | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> FastAPI:
    """The bridge app. Without `channel` it opens one to the cores the settings name (see
    `core_client`) on start-up, and waits for one to answer (`wait_for_core`) unless
    `stopping()` says the process is asked to stop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = channel is None
        core = CoreStubs(
            channel or core_channel(settings),
            bridge_token=CoreStubs.credential(settings),
        )
        relay = None
        if settings.relay_streams:
            relay = InferenceRelay(
                core.channel, settings.relay_streams, settings.bridge_relay_stream_seconds
            )
            core.use_relay(relay)
        app.state.core = core
        try:
            if own:
                await wait_for_core(
                    core.channel,
                    settings.core_target,
                    settings.bridge_core_wait_seconds,
                    stopping,
                )
            yield
        finally:
            if relay is not None:
                await relay.close()
            if own:
                await core.channel.close()

    app = _Bridge(
        title="Kyma",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.include_router(inference_routes.router)
    app.include_router(account_routes.router)
    app.include_router(auth_routes.router)
    app.include_router(key_routes.router)
    app.include_router(status_routes.router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        # Never: a page on another origin must not ride on the console's session cookie.
        allow_credentials=False,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=["*"],
        expose_headers=CORS_EXPOSED_HEADERS,
        max_age=600,
    )
    # The web console: pages at / whose scripts use the routes above (http_bridge/console/).
    app.include_router(console_router())

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(
            b'{"status":"ok"}', 200, {"x-request-id": new_request_id()}, media_type=_JSON
        )

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        check = stubs(request).health_check
        # Requests are served whatever the limits say: "shared" (counted in Redis, across
        # nodes), "per-node" (Redis is configured but unreachable: each node counts its share
        # alone, the state to alert on), "local" (no Redis configured: counted by this machine
        # alone, exact for one machine, which is how it is meant to run); "unknown" while no
        # core answers.
        try:
            reply = await check(health_pb2.HealthCheckRequest(), timeout=2)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            limits = await _limits(check)
        except grpc.aio.AioRpcError:
            serving, limits = False, "unknown"
        body = {
            "status": "ready" if serving else "unavailable",
            # Not serving: the core is unreachable, or its database does not answer.
            "core": "serving" if serving else "unavailable",
            "rate_limits": limits,
        }
        return Response(
            orjson.dumps(body),
            200 if serving else 503,
            {"x-request-id": new_request_id()},
            media_type=_JSON,
        )

    end_quietly(app)
    # Made once, now: a route missing from http_bridge/openapi.py stops the bridge here.
    document = openapi_document(app)
    app.openapi = lambda: document  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        message = {
            404: "Unknown URL. See the API reference for the paths Kyma serves.",
            405: "Method not allowed for this URL.",
        }.get(exc.status_code, str(exc.detail))
        return OpenAIError(exc.status_code, message).response({"x-request-id": new_request_id()})

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        return _unexpected(exc)

    return app


def _unexpected(exc: Exception) -> Response:
    log.error("unexpected bridge error: %s", type(exc).__name__, exc_info=exc)
    return OpenAIError(
        500, "The Kyma bridge had an internal error. Please retry.", "api_error"
    ).response({"x-request-id": new_request_id()})


# What CORSMiddleware adds to the response to a request without an Origin header.
_VARY_ORIGIN = ((b"vary", b"Origin"),)


class _Bridge(FastAPI):
    """FastAPI, with a lean path in front for the inference endpoints.

    A POST to one of them without an Origin header (an API client's, not a browser page's) is
    answered by `inference_routes.serve` directly, without FastAPI's layers per request (its
    middleware, routing, dependency solving and exception middleware: a good part of the
    bridge's CPU per request). Everything observable is as FastAPI answers it: the same
    handler makes the response (FastAPI's routes call it too), the `Vary: Origin` that CORS
    adds is added, and its exception handling is done the same way here: a client that left
    is answered 499 (`disconnects.py`), an unexpected error is logged and answered 500 and
    raised on to the server. Requests with an Origin header (CORS) and every other route take
    FastAPI's way; the routes stay in FastAPI's table, so the OpenAPI document is unchanged.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and (route := inference_routes.INFERENCE_ROUTES.get(scope["path"])) is not None
            and not scope.get("root_path")
        ):
            head = inference_routes.Head(scope)
            if head.origin is None:
                await self._lean(
                    route, inference_routes.Exchange(scope, receive, send, head, _VARY_ORIGIN)
                )
                return
        await super().__call__(scope, receive, send)

    async def _lean(self, route: Any, exchange: inference_routes.Exchange) -> None:
        state = self.state
        try:
            await inference_routes.serve(exchange, route, state.core, state.settings.max_body_bytes)
        except (ClientGone, ClientDisconnect):
            if not exchange.started:
                await exchange.respond(Response(status_code=CLIENT_CLOSED_REQUEST))
        except Exception as exc:
            # As Starlette's ServerErrorMiddleware does (outside CORS: no tail).
            response = _unexpected(exc)
            if not exchange.started:
                await response(exchange.scope, exchange.receive, exchange.send)
            raise
