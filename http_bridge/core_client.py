"""The bridge's side of the gRPC channel to the cores: stubs for every core service, call
metadata, and which calls may be sent again to another core.

One channel reaches every core (`KYMA_CORE_ADDRESS`: a list of addresses, or one name that
resolves to several) and spreads calls over them with gRPC's own client-side round robin,
health-checked: each core's gRPC health (the overall status, which is NOT_SERVING while its
database does not answer and from the moment it starts to shut down) decides whether it gets
calls. A core that goes away drops out of the rotation when its connection breaks; one that
comes back, or a new address the name resolves to, joins it. No gRPC-aware balancer is needed.
The inference endpoints' calls ride on relay streams (`relay.py`, `KYMA_BRIDGE_RELAY_STREAMS`):
each stream is one call to the channel, so the balancing above places streams, not requests,
and a stream is replaced every `KYMA_BRIDGE_RELAY_STREAM_SECONDS` so that the placement follows
the cores that come and go. Every rule below holds for a relayed call as for a call of its own.

Failure semantics — a call is sent to another core only when the first can have charged for
it nothing (the rule is `resendable`):
- gRPC itself retries a call that never reached a core, or that a stopping core refused
  unprocessed (transparent retries; always on).
- Reads (`Get…`, `List…`, health) are retried by gRPC's retry policy on UNAVAILABLE: they
  change nothing, so resending is always safe.
- An inference call that fails UNAVAILABLE with no reason from a core — the connection to it
  broke, or no core was reachable — before the bridge received any of its answer is sent again,
  up to `INFERENCE_ATTEMPTS` in all. The first core charged nothing for it: if it died, the
  other cores end its holds at their last checkpoint, which counts only what was sent, and
  nothing reached the bridge; if it lives, it saw the call cancelled with the connection and
  released the hold, as for a client that left. The one window left is a core that lives, had
  finished the answer, and lost it in transit as the connection broke (a network fault between
  bridge and core; a core stopping or dying cannot cause it): that call is charged and
  answered again. A call that received any part of its answer is never resent.
- An inference call that fails CANCELLED with no reason, before any of its answer arrived, and
  that the bridge did not cancel itself (its own cancellations raise no gRPC error), is sent
  again too: that is how gRPC ends the calls a core had received but not yet begun when it
  starts to shut down (seen in the cluster test as a 500 for a call racing a core's SIGTERM);
  they did nothing there. A core cancels a call it had begun only once its shutdown grace
  (`KYMA_SHUTDOWN_GRACE_SECONDS`) has run out; such a call's hold is released, as for a client
  that left — unless the answer was complete and only waiting for its settlement to commit
  (at most 2 s, during a shutdown in which the writer still runs), the one window in which
  this resend charges twice.
- Everything else is not resent: an answer that carries a core's reason (the core decided,
  e.g. the upstreams failed after failover), and calls that change something other than
  money in ways a second try would repeat (sign-up mails a code and makes an account, a key
  made twice is two keys, checkout opens a session). The client gets `503` with
  `Retry-After`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import Request
from grpc_health.v1 import health_pb2

from core_service.settings import Settings
from http_bridge.cookies import csrf_header, session_token
from http_bridge.errors import STATUS_DETAILS_KEY
from http_bridge.relay import InferenceRelay, InferenceRelayStub
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
T = TypeVar("T")

# Pauses before each further attempt of an inference call whose core was lost before it
# answered (see the docstring): long enough for the channel to see the broken connection and
# take that core out of the rotation.
RESEND_BACKOFF_SECONDS = (0.05, 0.25)
INFERENCE_ATTEMPTS = len(RESEND_BACKOFF_SECONDS) + 1

# Reads, which gRPC may resend on UNAVAILABLE (names of the services' methods).
_READS = {
    "kyma.routing.v1.RoutingService": None,  # every method
    "kyma.accounting.v1.AccountingService": (
        "GetAccount",
        "ListApiKeys",
        "GetUsage",
        "ListLedgerEntries",
        "ListReferrals",
        "ListRequests",
        "GetRequestRecord",
    ),
    "kyma.accounting.v1.SignupService": ("GetTerms",),
    "kyma.ratelimit.v1.RateLimitService": None,
    "kyma.status.v1.StatusService": None,
    "grpc.health.v1.Health": ("Check",),
}


def service_config() -> dict[str, Any]:
    """Round robin over every core address, each checked with gRPC health; reads retried on
    UNAVAILABLE, under gRPC's retry throttling (retries stop while more than half the recent
    calls fail, so an outage is not multiplied)."""
    reads = [
        {"service": service, **({"method": method} if method else {})}
        for service, methods in _READS.items()
        for method in methods or (None,)
    ]
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": reads,
                "retryPolicy": {
                    "maxAttempts": INFERENCE_ATTEMPTS,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 4,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.service_config", json.dumps(service_config())),
    # The balancing above is the operator's, not whatever a DNS TXT record says.
    ("grpc.service_config_disable_resolution", 1),
    # A core replaced (a new address behind the name) is looked up again within seconds,
    # and one that went away is tried again at least every few seconds, not every two minutes.
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def core_channel(settings: Settings) -> grpc.aio.Channel:
    """The one channel to every core the settings name."""
    return grpc.aio.insecure_channel(settings.core_target, options=GRPC_OPTIONS)


# How often a bridge waiting for a core at start-up looks whether it is asked to stop.
_STOP_CHECK_SECONDS = 0.1


async def wait_for_core(
    channel: grpc.aio.Channel,
    target: str,
    seconds: float,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Wait up to `seconds` for `channel` to reach a core, which a starting bridge does before
    it serves: it does not say it listens before it can serve, and a request that arrives
    meanwhile waits in the socket's queue rather than getting a 503. If none answered, the
    bridge serves anyway (inference gets 503, `/readyz` says why) and says so, since a bridge
    must come up to say it is alive while its cores are away. `stopping()` (looked at every
    `_STOP_CHECK_SECONDS`) ends the wait early: the process is asked to stop."""
    if seconds <= 0:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    ready = asyncio.ensure_future(channel.channel_ready())
    try:
        if channel.get_state() != grpc.ChannelConnectivity.READY:
            log.info("waiting up to %g s for a core at %s", seconds, target)
        while not ready.done() and not stopping() and (left := deadline - loop.time()) > 0:
            await asyncio.wait({ready}, timeout=min(left, _STOP_CHECK_SECONDS))
    finally:
        if not ready.done():
            ready.cancel()
            await asyncio.wait({ready})
    if ready.cancelled() and not stopping():
        log.warning(
            "no core at %s answered within %g s (KYMA_BRIDGE_CORE_WAIT_SECONDS); serving "
            "anyway: inference calls get 503 until one does",
            target,
            seconds,
        )


async def with_resends(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, made again (up to INFERENCE_ATTEMPTS in all) while it fails in a way
    `resendable` allows. `attempt` must give up at the first part of the answer it receives."""
    for pause in (*RESEND_BACKOFF_SECONDS, None):
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if pause is None or not resendable(error):
                raise
            log.info("a core was lost before it answered (%s); sending to another", error.code())
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


# Failures of an inference call that may mean no core began it (see the docstring).
_RESENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def resendable(error: grpc.aio.AioRpcError) -> bool:
    """Whether an inference call that failed with `error`, before any of its answer arrived,
    may be sent to another core: only when no core gave a reason (its connection broke, none
    was reachable, or a stopping core dropped it unbegun). A core's own UNAVAILABLE always
    carries one (see the docstring)."""
    if error.code() not in _RESENT_CODES:
        return False
    return not any(key == STATUS_DETAILS_KEY for key, _ in error.trailing_metadata() or ())


Metadata = tuple[tuple[str, str], ...]

# Far longer than any Kyma key or admin token ("Bearer " + ~50 characters), far shorter than
# what gRPC refuses in call metadata (8 KiB may already be refused).
MAX_AUTHORIZATION_CHARS = 1024


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
        # Where the inference endpoints send their calls: this stub, or the relay's
        # (`use_relay`), which carries them on long-lived streams.
        self.inference_calls: Any = self.inference
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

    def use_relay(self, relay: InferenceRelay) -> None:
        self.inference_calls = InferenceRelayStub(relay, self.inference)


def stubs(request: Request) -> CoreStubs:
    return request.app.state.core  # type: ignore[no-any-return]


def new_request_id() -> str:
    return f"{REQUEST_ID_PREFIX}{secrets.token_hex(12)}"


def call_metadata(
    request: Request,
    request_id: str,
    *,
    session: bool = False,
    authorization: str | None = None,
) -> Metadata:
    """The caller's credentials (the `Authorization` header unless given) and the request id,
    as the core reads them. With `session` (the account's own endpoints), also the web session
    from the cookie and the CSRF header, which the core weighs only when there is no API key."""
    if authorization is None:
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
    return key_metadata(authorization, request_id)


def key_metadata(authorization: str, request_id: str) -> Metadata:
    """An `Authorization` header and the request id, as the core reads them."""
    if not (
        len(authorization) <= MAX_AUTHORIZATION_CHARS
        and authorization.isascii()
        and authorization.isprintable()
    ):
        # gRPC metadata is printable ASCII and bounded in size; such a header cannot hold a
        # key, so the core is asked about a token that fails its checks, and answers as for
        # any wrong key (401), instead of gRPC refusing the metadata in its own words.
        authorization = "Bearer invalid"
    return ((MetadataKey.AUTHORIZATION, authorization), (MetadataKey.REQUEST_ID, request_id))
