"""SignupService over gRPC: accounts from verified email addresses.

Whose address a sign-up comes from decides the per-address limits and is recorded as an abuse
signal, so the core believes what the metadata says about the end user (`x-client-ip`,
`x-client-fingerprint`) only from the operator's own bridge: a call that carries the bridge
credential (`x-kyma-bridge-token`, KYMA_BRIDGE_TOKEN or data_dir/bridge_token), compared in
constant time. Any other caller — an internal service, or anyone who can reach the gRPC port —
is the end user itself: its address is the gRPC peer's and the fingerprint metadata is ignored.
A wrong or missing credential is not an error (the call goes on, on the peer's address); the
first call that sends a client address the core does not believe is logged once, since a
bridge left without the token makes every sign-up look as if it came from the bridge.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
from pydantic import SecretStr

from core_service.accounts.signup import SignupFlow
from core_service.edge.messages.accounts import (
    account_message,
    key_message,
    session_message,
    timestamp,
)
from core_service.edge.metadata import metadata_value
from core_service.terms import TermsCatalogue
from kyma.accounting.v1 import signup_service_pb2 as pb
from kyma.accounting.v1 import signup_service_pb2_grpc as pb_grpc
from kyma.contract.v1.constants import MetadataKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSignals:
    ip: str | None
    fingerprint: str | None


def peer_ip(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's own address, from the gRPC peer ("ipv4:127.0.0.1:50432",
    "ipv6:[::1]:50432", the brackets percent-encoded by some gRPC versions); None for a Unix
    socket or anything else without an IP."""
    kind, _, rest = (context.peer() or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = unquote(rest).rsplit(":", 1)[0]
    return host.removeprefix("[").removesuffix("]") or None


def from_bridge(context: grpc.aio.ServicerContext, bridge_token: bytes) -> bool:
    """Whether the call carries the bridge credential (compared in constant time)."""
    given = metadata_value(context, MetadataKey.BRIDGE_TOKEN)
    return given is not None and hmac.compare_digest(given.encode(), bridge_token)


def client_ip(context: grpc.aio.ServicerContext, bridge_token: bytes) -> str | None:
    """The end user's address: as the bridge forwards it, when the caller is the bridge (it
    presented the bridge credential); else the caller's own (the gRPC peer's)."""
    return client_signals(context, bridge_token).ip


def client_signals(context: grpc.aio.ServicerContext, bridge_token: bytes) -> ClientSignals:
    """The end user's address and fingerprint: the bridge's word for both when the caller is the
    bridge; else the peer's address and no fingerprint."""
    if from_bridge(context, bridge_token):
        return ClientSignals(
            ip=metadata_value(context, MetadataKey.CLIENT_IP) or peer_ip(context),
            fingerprint=metadata_value(context, MetadataKey.CLIENT_FINGERPRINT),
        )
    return ClientSignals(ip=peer_ip(context), fingerprint=None)


class SignupServicer(pb_grpc.SignupServiceServicer):
    def __init__(self, flow: SignupFlow, *, bridge_token: SecretStr, terms: TermsCatalogue) -> None:
        self._flow = flow
        self._terms = terms
        self._bridge_token = bridge_token.get_secret_value().encode()
        self._warned = False

    def _signals(self, context: grpc.aio.ServicerContext) -> ClientSignals:
        signals = client_signals(context, self._bridge_token)
        forwarded = metadata_value(context, MetadataKey.CLIENT_IP)
        if forwarded and forwarded != signals.ip and not self._warned:
            self._warned = True
            log.warning(
                "a sign-up call named a client address without the bridge credential: the "
                "caller's own address is used instead (a bridge on another machine needs "
                "KYMA_BRIDGE_TOKEN); logged once"
            )
        return signals

    async def StartSignup(
        self, request: pb.StartSignupRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartSignupResponse:
        signals = self._signals(context)
        seconds = await self._flow.start(
            request.email,
            referral_code=request.referral_code,
            ip=signals.ip,
            fingerprint=signals.fingerprint,
        )
        return pb.StartSignupResponse(expires_in_seconds=seconds)

    async def CompleteSignup(
        self, request: pb.CompleteSignupRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteSignupResponse:
        signals = self._signals(context)
        done = await self._flow.complete(
            request.email,
            request.code,
            ip=signals.ip,
            session=request.session,
            accepted_terms_version=request.accepted_terms_version,
        )
        created = done.created
        reply = pb.CompleteSignupResponse(
            account=account_message(created.account, tier=0),
            api_key_secret=created.secret,
        )
        if created.key is not None:
            reply.api_key.CopyFrom(key_message(created.key))
        if done.session is not None:
            reply.session.CopyFrom(session_message(done.session.owner))
            reply.session_token = done.session.token
        return reply

    async def GetTerms(
        self, request: pb.GetTermsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTermsResponse:
        current = self._terms.current
        return pb.GetTermsResponse(
            version=current.version,
            published_at=timestamp(current.published_at),
            text=current.text,
        )
