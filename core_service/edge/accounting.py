"""AccountingService over gRPC: an account holder's view of their own account, called with an
API key or a web session (`accounts/callers.py`; calls that change something need the
session's CSRF token)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import grpc

from core_service.accounts.callers import Caller, Callers, may_manage_keys
from core_service.accounts.key_limits import FIELDS, LimitChanges, column_values
from core_service.accounts.names import key_name
from core_service.accounts.store import AccountStore
from core_service.admin.enforcement import Enforcement
from core_service.billing.ledger import Ledger
from core_service.billing.low_balance import LowBalanceAlerts
from core_service.billing.pricing import parse_usd_nanos
from core_service.billing.usage import UsageReport
from core_service.catalog import CatalogHolder
from core_service.clock import Clock
from core_service.edge.messages.accounts import (
    INTERVAL_NAMES,
    account_message,
    key_message,
    notice_message,
    terms_message,
    terms_notice,
    timestamp,
)
from core_service.edge.messages.limits import tier_message
from core_service.edge.messages.money import balance_message, entry_message, money
from core_service.edge.messages.referrals import referral_message
from core_service.edge.messages.requests import request_message
from core_service.edge.metadata import credentials
from core_service.errors import InvalidRequest, NotFound, Unauthenticated
from core_service.logs.lookup import RequestRecords
from core_service.logs.query import RequestLogQuery
from core_service.ratelimit.tiers import TierTable
from core_service.referrals.program import ReferralProgram
from core_service.standing import check_in_good_standing
from core_service.terms import TermsCatalogue
from kyma.accounting.v1 import accounting_service_pb2 as pb
from kyma.accounting.v1 import accounting_service_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_ACCOUNT_FIELDS = frozenset({"low_balance_threshold_usd"})
_KEY_FIELDS = FIELDS | {"name"}


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


def _encode_request_token(at: datetime, entry_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{entry_id}".encode()).decode()


def _decode_request_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        at, _, entry_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        moment = datetime.fromisoformat(at)
        if entry_id and moment.tzinfo is not None:
            return moment.astimezone(UTC), entry_id
    except (ValueError, UnicodeError):
        pass
    raise InvalidRequest("The page token is not valid.", param="page_token")


def _page_size(value: int) -> int:
    size = value or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be 1 to {MAX_PAGE_SIZE}.", param="page_size")
    return size


def _mask(fields: list[str], allowed: frozenset[str]) -> frozenset[str]:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidRequest(
            f"update_mask names fields that cannot be changed: {', '.join(unknown)}.",
            param="update_mask",
        )
    return frozenset(fields)


def _limit_changes(limits: pb.KeyLimitsInput, fields: frozenset[str]) -> LimitChanges:
    return LimitChanges(
        fields=fields,
        spend_cap_usd=limits.spend_cap_usd,
        cap_interval=INTERVAL_NAMES.get(limits.cap_interval, ""),
        expires_at=limits.expires_at.ToDatetime(tzinfo=UTC)
        if limits.HasField("expires_at")
        else None,
        allowed_models=tuple(limits.allowed_models),
    )


class AccountingServicer(pb_grpc.AccountingServiceServicer):
    def __init__(
        self,
        callers: Callers,
        store: AccountStore,
        ledger: Ledger,
        usage: UsageReport,
        enforcement: Enforcement,
        clock: Clock,
        referrals: ReferralProgram,
        requests: RequestRecords,
        *,
        terms: TermsCatalogue,
        catalogue: CatalogHolder,
        logs: RequestLogQuery,
        low_balance: LowBalanceAlerts | None = None,
        terms_link: str = "",
        tiers: TierTable | None = None,
    ) -> None:
        self._tiers = tiers
        self._callers = callers
        self._requests = requests
        self._referrals = referrals
        self._clock = clock
        self._store = store
        self._ledger = ledger
        self._usage = usage
        self._enforcement = enforcement
        self._terms = terms
        self._catalogue = catalogue
        self._logs = logs
        self._low_balance = low_balance
        self._terms_link = terms_link

    async def _caller(self, context: grpc.aio.ServicerContext, *, changes: bool = False) -> Caller:
        return await self._callers.identify(credentials(context), changes=changes)

    async def _account_id(self, context: grpc.aio.ServicerContext) -> str:
        return (await self._caller(context)).principal.account_id

    def _model_exists(self, name: str) -> bool:
        return self._catalogue.has(name)

    async def _account_reply(self, caller: Caller) -> pb.GetAccountResponse:
        principal = caller.principal
        account = await self._store.get_account(principal.account_id)
        if account is None:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        balance = await self._ledger.balance(account.id)
        notices = [notice_message(n) for n in await self._enforcement.notices(account.id)]
        changed = terms_notice(account, self._terms, self._terms_link)
        if changed is not None:
            notices.insert(0, changed)
        if self._tiers is not None:
            # The tier as of the balance just read: the caller's cached lookup learns of a
            # purchase a moment later (the account-event feed), and this answer must agree
            # with the `total_purchased` it shows.
            tier = self._tiers.effective(balance.total_purchased_nanos, account.pinned_tier)
            principal = dataclasses.replace(principal, tier=tier)
        reply = pb.GetAccountResponse(
            account=account_message(account, tier=principal.tier.tier),
            balance=balance_message(balance),
            limits=tier_message(principal),
            notices=notices,
            referral_link=self._referrals.link(account.referral_code or ""),
            terms=terms_message(account, self._terms),
        )
        if account.low_balance_threshold_nanos is not None:
            reply.low_balance_threshold.CopyFrom(money(account.low_balance_threshold_nanos))
        return reply

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        return await self._account_reply(await self._caller(context))

    async def UpdateAccount(
        self, request: pb.UpdateAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateAccountResponse:
        caller = await self._caller(context, changes=True)
        fields = _mask(list(request.update_mask.paths), _ACCOUNT_FIELDS)
        account_id = caller.principal.account_id
        if "low_balance_threshold_usd" in fields:
            text = request.low_balance_threshold_usd.strip()
            threshold = parse_usd_nanos(text, param="low_balance_threshold_usd") if text else None
            await self._store.set_low_balance_threshold(account_id, threshold)
            if self._low_balance is not None:
                self._low_balance.watch(account_id)
        return pb.UpdateAccountResponse(account=await self._account_reply(caller))

    async def AcceptTerms(
        self, request: pb.AcceptTermsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcceptTermsResponse:
        caller = await self._caller(context, changes=True)
        current = self._terms.current.version
        if request.version.strip() != current:
            raise InvalidRequest(
                f"The current terms of service are version {current}; accept those.",
                param="version",
            )
        account = await self._store.accept_terms(caller.principal.account_id, current)
        if account is None:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        return pb.AcceptTermsResponse(terms=terms_message(account, self._terms))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        views = await self._store.list_keys(await self._account_id(context))
        now = self._clock.now()
        return pb.ListApiKeysResponse(keys=[key_message(view, now) for view in views])

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        principal = (await self._caller(context, changes=True)).principal
        check_in_good_standing(principal, self._clock.now())
        may_manage_keys(principal)
        name = key_name(request.name)
        limits = request.limits
        given = frozenset(
            field
            for field, present in (
                ("spend_cap_usd", bool(limits.spend_cap_usd)),
                ("cap_interval", limits.cap_interval != pb.CAP_INTERVAL_UNSPECIFIED),
                ("expires_at", limits.HasField("expires_at")),
                ("allowed_models", bool(limits.allowed_models)),
            )
            if present
        )
        key_values, spend_values = column_values(
            _limit_changes(limits, given), now=self._clock.now(), model_exists=self._model_exists
        )
        view, secret = await self._store.create_key(
            principal.account_id, name, key_values=key_values, spend_values=spend_values
        )
        return pb.CreateApiKeyResponse(key=key_message(view, self._clock.now()), secret=secret)

    async def UpdateApiKey(
        self, request: pb.UpdateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateApiKeyResponse:
        principal = (await self._caller(context, changes=True)).principal
        may_manage_keys(principal)
        fields = _mask(list(request.update_mask.paths), _KEY_FIELDS)
        key_values, spend_values = column_values(
            _limit_changes(request.limits, fields - {"name"}),
            now=self._clock.now(),
            model_exists=self._model_exists,
        )
        if "name" in fields:
            key_values["name"] = key_name(request.name)
        view = await self._store.update_key(
            principal.account_id, request.id, key_values=key_values, spend_values=spend_values
        )
        if view is None:
            raise NotFound("The account has no key with that id.", param="id")
        # This node takes the new limits at once; the others within a poll of the feed.
        self._callers.forget_key(view.key.key_hash)
        return pb.UpdateApiKeyResponse(key=key_message(view, self._clock.now()))

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        principal = (await self._caller(context, changes=True)).principal
        may_manage_keys(principal)
        view = await self._store.revoke_key(principal.account_id, request.id)
        if view is None:
            raise NotFound("The account has no key with that id.", param="id")
        # This node forgets it at once; the others within their key cache's few seconds.
        self._callers.forget_key(view.key.key_hash)
        return pb.RevokeApiKeyResponse(key=key_message(view, self._clock.now()))

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
        size = _page_size(request.page_size)
        before = decode_page_token(request.page_token)
        entries = await self._ledger.entries(account_id, limit=size + 1, before_id=before)
        page, more = entries[:size], len(entries) > size
        return pb.ListLedgerEntriesResponse(
            entries=[entry_message(entry, account_id) for entry in page],
            next_page_token=encode_page_token(page[-1].id) if more else "",
        )

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRequestsResponse:
        account_id = await self._account_id(context)
        size = _page_size(request.page_size)
        before = _decode_request_token(request.page_token)
        rows = await self._logs.history(account_id, limit=size + 1, before=before)
        page, more = rows[:size], len(rows) > size
        return pb.ListRequestsResponse(
            requests=[
                pb.RequestSummary(
                    request_id=row.request_id,
                    created_at=timestamp(row.created_at),
                    endpoint=row.endpoint,
                    model=row.model,
                    status=row.status,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cost=money(row.cost_nanos),
                    stream=row.stream,
                    estimated=row.estimated,
                    key_id=row.key_id or "",
                )
                for row in page
            ],
            next_page_token=_encode_request_token(page[-1].created_at, page[-1].id) if more else "",
        )

    async def GetRequestRecord(
        self, request: pb.GetRequestRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRequestRecordResponse:
        account_id = await self._account_id(context)
        record = await self._requests.get(account_id, request.request_id)
        return pb.GetRequestRecordResponse(request=request_message(record, account_id))

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
            tokens_required=policy.tokens_required,
        )
