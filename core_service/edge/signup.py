"""SignupService over gRPC: accounts from verified email addresses."""

from __future__ import annotations

import grpc

from core_service.accounts.signup import SignupFlow
from core_service.edge.messages.accounts import account_message, key_message
from core_service.edge.metadata import metadata_value
from kyma.accounting.v1 import signup_service_pb2 as pb
from kyma.accounting.v1 import signup_service_pb2_grpc as pb_grpc
from kyma.contract.v1.constants import MetadataKey


def client_ip(context: grpc.aio.ServicerContext) -> str | None:
    """The end user's address: as the bridge passes it, else the caller's own."""
    given = metadata_value(context, MetadataKey.CLIENT_IP)
    if given:
        return given
    peer = context.peer() or ""  # e.g. "ipv4:127.0.0.1:50432"
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else None


class SignupServicer(pb_grpc.SignupServiceServicer):
    def __init__(self, flow: SignupFlow) -> None:
        self._flow = flow

    async def StartSignup(
        self, request: pb.StartSignupRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartSignupResponse:
        seconds = await self._flow.start(
            request.email,
            referral_code=request.referral_code,
            ip=client_ip(context),
            fingerprint=metadata_value(context, MetadataKey.CLIENT_FINGERPRINT),
        )
        return pb.StartSignupResponse(expires_in_seconds=seconds)

    async def CompleteSignup(
        self, request: pb.CompleteSignupRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteSignupResponse:
        created = await self._flow.complete(request.email, request.code, ip=client_ip(context))
        return pb.CompleteSignupResponse(
            account=account_message(created.account, tier=0),
            api_key=key_message(created.key),
            api_key_secret=created.secret,
        )
