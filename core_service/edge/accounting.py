"""AccountingService over gRPC: an account holder's view of their own account."""

from __future__ import annotations

import base64

import grpc

from core_service.accounts.auth import Authenticator
from core_service.accounts.names import key_name
from core_service.accounts.store import AccountStore
from core_service.admin.enforcement import Enforcement
from core_service.billing.ledger import Ledger
from core_service.billing.usage import UsageReport
from core_service.clock import Clock
from core_service.edge.messages.accounts import account_message, key_message, notice_message
from core_service.edge.messages.limits import tier_message
from core_service.edge.messages.money import balance_message, entry_message, money
from core_service.edge.messages.referrals import referral_message
from core_service.edge.messages.requests import request_message
from core_service.edge.metadata import authorization
from core_service.errors import InvalidRequest, NotFound, Unauthenticated
from core_service.logs.lookup import RequestRecords
from core_service.referrals.program import ReferralProgram
from core_service.standing import check_in_good_standing
from core_service.values import Principal
from kyma.accounting.v1 import accounting_service_pb2 as pb
from kyma.accounting.v1 import accounting_service_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def encode_page_token(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"before:{entry_id}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        prefix, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if prefix == "before" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeError):
        pass
    raise InvalidRequest("The page token is not valid.", param="page_token")


class AccountingServicer(pb_grpc.AccountingServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        store: AccountStore,
        ledger: Ledger,
        usage: UsageReport,
        enforcement: Enforcement,
        clock: Clock,
        referrals: ReferralProgram,
        requests: RequestRecords,
    ) -> None:
        self._requests = requests
        self._referrals = referrals
        self._clock = clock
        self._authenticator = authenticator
        self._store = store
        self._ledger = ledger
        self._usage = usage
        self._enforcement = enforcement

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        return await self._authenticator.authenticate(authorization(context))

    async def _account_id(self, context: grpc.aio.ServicerContext) -> str:
        return (await self._principal(context)).account_id

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        principal = await self._principal(context)
        account = await self._store.get_account(principal.account_id)
        if account is None:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        balance = await self._ledger.balance(account.id)
        notices = await self._enforcement.notices(account.id)
        return pb.GetAccountResponse(
            account=account_message(account, tier=principal.tier.tier),
            balance=balance_message(balance),
            limits=tier_message(principal),
            notices=[notice_message(n) for n in notices],
            referral_link=self._referrals.link(account.referral_code or ""),
        )

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        keys = await self._store.list_keys(await self._account_id(context))
        return pb.ListApiKeysResponse(keys=[key_message(k) for k in keys])

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        principal = await self._principal(context)
        check_in_good_standing(principal, self._clock.now())
        name = key_name(request.name)
        key, secret = await self._store.create_key(principal.account_id, name)
        return pb.CreateApiKeyResponse(key=key_message(key), secret=secret)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        key = await self._store.revoke_key(await self._account_id(context), request.id)
        if key is None:
            raise NotFound("The account has no key with that id.", param="id")
        # This node forgets it at once; the others within their key cache's few seconds.
        self._authenticator.forget(key.key_hash)
        return pb.RevokeApiKeyResponse(key=key_message(key))

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        account_id = await self._account_id(context)
        first, last = self._usage.period(request.start_day, request.end_day)
        rows = await self._usage.rows(account_id, first, last)
        return pb.GetUsageResponse(
            rows=[
                pb.UsageRow(
                    day=row.day.isoformat(),
                    model=row.model,
                    requests=row.requests,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cost=money(row.cost_nanos),
                    estimated_requests=row.estimated_requests,
                    cached_tokens=row.cached_tokens,
                    cache_write_tokens=row.cache_write_tokens,
                    reasoning_tokens=row.reasoning_tokens,
                )
                for row in rows
            ]
        )

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLedgerEntriesResponse:
        account_id = await self._account_id(context)
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"page_size must be 1 to {MAX_PAGE_SIZE}.", param="page_size")
        before = decode_page_token(request.page_token)
        entries = await self._ledger.entries(account_id, limit=size + 1, before_id=before)
        page, more = entries[:size], len(entries) > size
        return pb.ListLedgerEntriesResponse(
            entries=[entry_message(entry, account_id) for entry in page],
            next_page_token=encode_page_token(page[-1].id) if more else "",
        )

    async def ListReferrals(
        self, request: pb.ListReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReferralsResponse:
        account_id = await self._account_id(context)
        policy = self._referrals.policy
        views = await self._referrals.search(referrer_id=account_id)
        return pb.ListReferralsResponse(
            referrals=[referral_message(v, tokens_required=policy.tokens_required) for v in views],
            program_enabled=policy.enabled,
            reward=money(policy.reward_nanos),
        )

    async def GetRequestRecord(
        self, request: pb.GetRequestRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRequestRecordResponse:
        account_id = await self._account_id(context)
        record = await self._requests.get(account_id, request.request_id)
        return pb.GetRequestRecordResponse(request=request_message(record, account_id))
