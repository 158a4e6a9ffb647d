"""SessionService over gRPC: sign-in by emailed code, and the web sessions of the console.

The end user's address (for the per-address limits and the audit log) is believed from the
metadata only when the caller is the operator's bridge, as for sign-up (`edge/signup.py`)."""

from __future__ import annotations

import grpc
from pydantic import SecretStr

from core_service.accounts.callers import Callers
from core_service.accounts.sessions import Sessions
from core_service.accounts.signin import SigninFlow
from core_service.edge.messages.accounts import session_message
from core_service.edge.metadata import credentials
from core_service.edge.signup import client_ip
from kyma.accounting.v1 import session_service_pb2 as pb
from kyma.accounting.v1 import session_service_pb2_grpc as pb_grpc


class SessionServicer(pb_grpc.SessionServiceServicer):
    def __init__(
        self, flow: SigninFlow, sessions: Sessions, callers: Callers, *, bridge_token: SecretStr
    ) -> None:
        self._flow = flow
        self._sessions = sessions
        self._callers = callers
        self._bridge_token = bridge_token.get_secret_value().encode()

    async def StartSignIn(
        self, request: pb.StartSignInRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartSignInResponse:
        seconds = await self._flow.start(request.email, ip=client_ip(context, self._bridge_token))
        return pb.StartSignInResponse(expires_in_seconds=seconds)

    async def CompleteSignIn(
        self, request: pb.CompleteSignInRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteSignInResponse:
        started = await self._flow.complete(
            request.email,
            request.code,
            ip=client_ip(context, self._bridge_token),
            replacing=credentials(context).session,
        )
        return pb.CompleteSignInResponse(
            session=session_message(started.owner), session_token=started.token
        )

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        owner = await self._callers.session(credentials(context))
        return pb.GetSessionResponse(session=session_message(owner))

    async def EndSession(
        self, request: pb.EndSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.EndSessionResponse:
        owner = await self._callers.session(credentials(context), changes=True)
        await self._sessions.end(owner)
        return pb.EndSessionResponse()

    async def EndAllSessions(
        self, request: pb.EndAllSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EndAllSessionsResponse:
        owner = await self._callers.session(credentials(context), changes=True)
        ended = await self._sessions.end_all(owner, ip=client_ip(context, self._bridge_token))
        return pb.EndAllSessionsResponse(ended=ended)
