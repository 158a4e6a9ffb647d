"""Admin RPCs on accounts: create one, list them (with shared abuse signals), look one up."""

from __future__ import annotations

import grpc

from core_service.accounts.auth import Authenticator
from core_service.accounts.emails import parse_email
from core_service.accounts.names import key_name
from core_service.accounts.store import AccountStore
from core_service.admin.directory import AccountDirectory, Listed
from core_service.admin.enforcement import Enforcement
from core_service.billing.ledger import Ledger
from core_service.edge.admin.paging import page_size
from core_service.edge.messages.accounts import account_message, key_message, notice_message
from core_service.edge.messages.limits import tier_message
from core_service.edge.messages.money import balance_message
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.admin.v1 import admin_service_pb2 as pb

_STATUS_NAMES = {
    accounting_pb.ACCOUNT_STATUS_ACTIVE: "active",
    accounting_pb.ACCOUNT_STATUS_SUSPENDED: "suspended",
    accounting_pb.ACCOUNT_STATUS_BANNED: "banned",
}


def summary_message(listed: Listed) -> pb.AccountSummary:
    account = listed.account
    return pb.AccountSummary(
        account=account_message(account, tier=0),
        signup_ip=account.signup_ip or "",
        signup_fingerprint=account.signup_fingerprint or "",
        sharing_signals=listed.sharing_signals,
    )


class AccountAdmin:
    def __init__(
        self,
        store: AccountStore,
        authenticator: Authenticator,
        directory: AccountDirectory,
        enforcement: Enforcement,
        ledger: Ledger,
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._directory = directory
        self._enforcement = enforcement
        self._ledger = ledger

    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAccountResponse:
        created = await self._store.create_account(
            parse_email(request.email), key_name=key_name(request.key_name)
        )
        return pb.CreateAccountResponse(
            account=account_message(created.account, tier=0),
            api_key=key_message(created.key) if created.key is not None else None,
            api_key_secret=created.secret,
        )

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccountsResponse:
        listed = await self._directory.search(
            status=_STATUS_NAMES.get(request.status),
            shared_signals=request.shared_signals,
            limit=page_size(request.page_size),
            after_id=request.after_id or None,
        )
        return pb.ListAccountsResponse(accounts=[summary_message(item) for item in listed])

    async def GetAccountDetails(
        self, request: pb.GetAccountDetailsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountDetailsResponse:
        account_id = request.account_id
        listed, related = await self._directory.details(account_id)
        principal = await self._authenticator.principal_for_account(account_id)
        summary = summary_message(listed)
        summary.account.tier = principal.tier.tier
        return pb.GetAccountDetailsResponse(
            summary=summary,
            balance=balance_message(await self._ledger.balance(account_id)),
            limits=tier_message(principal),
            keys=[key_message(k) for k in await self._store.list_keys(account_id)],
            notices=[notice_message(n) for n in await self._enforcement.notices(account_id)],
            related=[summary_message(item) for item in related],
            referrals_revoked=bool(listed.account.referrals_revoked),
        )
