"""AccountingService over gRPC: an account holder's view of their own account."""

from __future__ import annotations

import grpc
from kyma.accounting.v1 import accounting_service_pb2 as pb
from kyma.accounting.v1 import accounting_service_pb2_grpc as pb_grpc

from core_service.accounts.auth import Authenticator
from core_service.accounts.messages import account_message
from core_service.accounts.store import AccountStore
from core_service.errors import Unauthenticated
from core_service.grpc_errors import translated
from core_service.grpc_metadata import metadata_value


class AccountingServicer(pb_grpc.AccountingServiceServicer):
    def __init__(self, authenticator: Authenticator, store: AccountStore) -> None:
        self._authenticator = authenticator
        self._store = store

    @translated
    async def GetAccount(self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext) -> pb.GetAccountResponse:
        principal = await self._authenticator.authenticate(metadata_value(context, "authorization"))
        account = await self._store.get_account(principal.account_id)
        if account is None:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        return pb.GetAccountResponse(account=account_message(account))
