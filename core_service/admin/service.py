"""AdminService over gRPC: operators' actions, behind the admin token."""

from __future__ import annotations

import grpc
from kyma.admin.v1 import admin_service_pb2 as pb
from kyma.admin.v1 import admin_service_pb2_grpc as pb_grpc

from core_service.accounts.emails import parse_email
from core_service.accounts.messages import account_message, key_message
from core_service.accounts.store import AccountStore
from core_service.admin.auth import AdminGuard
from core_service.errors import InvalidRequest
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value

MAX_KEY_NAME = 100


def key_name(raw: str) -> str:
    name = raw.strip() or "default"
    if len(name) > MAX_KEY_NAME or not name.isprintable():
        raise InvalidRequest("A key name is up to 100 printable characters.", param="key_name")
    return name


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, guard: AdminGuard, store: AccountStore) -> None:
        self._guard = guard
        self._store = store

    @translated
    async def CreateAccount(self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext) -> pb.CreateAccountResponse:
        self._guard.check(metadata_value(context, "authorization"))
        created = await self._store.create_account(
            parse_email(request.email), key_name=key_name(request.key_name)
        )
        return pb.CreateAccountResponse(
            account=account_message(created.account),
            api_key=key_message(created.key),
            api_key_secret=created.secret,
        )
