"""The bridge's side of the gRPC channel: stubs for every core service, and call metadata."""

from __future__ import annotations

import logging
import secrets

import grpc
from fastapi import Request
from grpc_health.v1 import health_pb2

from core_service.settings import Settings
from http_bridge.cookies import csrf_header, session_token
from kyma.accounting.v1 import (
    accounting_service_pb2_grpc,
    session_service_pb2_grpc,
    signup_service_pb2_grpc,
)
from kyma.billing.v1 import billing_service_pb2_grpc
from kyma.contract.v1.constants import MAX_MESSAGE_BYTES, REQUEST_ID_PREFIX, MetadataKey
from kyma.inference.v1 import inference_service_pb2_grpc
from kyma.routing.v1 import routing_service_pb2_grpc
from kyma.status.v1 import status_service_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]

Metadata = tuple[tuple[str, str], ...]


class CoreStubs:
    """Stubs on one channel to the core, and the bridge credential: sent beside the end user's
    address and fingerprint, it is what makes the core believe them (without it the core takes
    the bridge's own address for the client's)."""

    @staticmethod
    def credential(settings: Settings) -> str | None:
        """The bridge credential (see `Settings.bridge_credential`), read once at start-up. One
        that cannot be read or made does not stop the bridge, which serves everything else as
        before: it is logged, and sign-ups through this bridge then count as coming from the
        bridge's own address."""
        try:
            return settings.bridge_credential()
        except (OSError, ValueError) as error:
            log.error(
                "no bridge credential (%s): the core will not believe the client addresses "
                "this bridge forwards; set KYMA_BRIDGE_TOKEN to the core's",
                error,
            )
            return None

    def __init__(self, channel: grpc.aio.Channel, *, bridge_token: str | None = None) -> None:
        self.channel = channel
        self.bridge_token = bridge_token
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        self.routing = routing_service_pb2_grpc.RoutingServiceStub(channel)
        self.accounting = accounting_service_pb2_grpc.AccountingServiceStub(channel)
        self.billing = billing_service_pb2_grpc.BillingServiceStub(channel)
        self.signup = signup_service_pb2_grpc.SignupServiceStub(channel)
        self.sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        self.status = status_service_pb2_grpc.StatusServiceStub(channel)
        # Health's Check, called directly (the published stubs do not type HealthStub's methods).
        self.health_check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )


def stubs(request: Request) -> CoreStubs:
    return request.app.state.core  # type: ignore[no-any-return]


def new_request_id() -> str:
    return f"{REQUEST_ID_PREFIX}{secrets.token_hex(12)}"


def call_metadata(request: Request, request_id: str, *, session: bool = False) -> Metadata:
    """The caller's credentials and the request id, as the core reads them. With `session`
    (the account's own endpoints), also the web session from the cookie and the CSRF header,
    which the core weighs only when there is no API key."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        own: Metadata = ((MetadataKey.REQUEST_ID, request_id),)
        token = session_token(request) if session else None
        if token is None:
            return own
        csrf = csrf_header(request)
        return (
            *own,
            (MetadataKey.SESSION, token),
            *(((MetadataKey.CSRF_TOKEN, csrf),) if csrf else ()),
        )
    if not (authorization.isascii() and authorization.isprintable()):
        # gRPC metadata is printable ASCII; such a header cannot hold a key, so the core is
        # asked about a token that fails its checks, and answers as for any wrong key.
        authorization = "Bearer invalid"
    return ((MetadataKey.AUTHORIZATION, authorization), (MetadataKey.REQUEST_ID, request_id))
