"""The account holder's endpoints (`/v1/account…`) and Stripe billing (`/v1/billing…`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from http_bridge.bodies import (
    BodyTooLarge,
    json_object,
    json_response,
    read_body,
    too_large,
)
from http_bridge.calls import call_core, failed_response, unix
from http_bridge.core_client import new_request_id, stubs
from http_bridge.errors import OpenAIError
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.billing.v1 import billing_service_pb2 as billing_pb

# Stripe's events are small; anything bigger is not Stripe.
MAX_WEBHOOK_BYTES = 1024 * 1024

_STATUS = {
    accounting_pb.ACCOUNT_STATUS_ACTIVE: "active",
    accounting_pb.ACCOUNT_STATUS_SUSPENDED: "suspended",
    accounting_pb.ACCOUNT_STATUS_BANNED: "banned",
}
_KIND = {
    value: name.removeprefix("LEDGER_ENTRY_KIND_").lower()
    for name, value in accounting_pb.LedgerEntryKind.items()
}
_OUTCOME = {
    value: name.removeprefix("WEBHOOK_OUTCOME_").lower()
    for name, value in billing_pb.WebhookOutcome.items()
}

router = APIRouter()


@router.get("/v1/account")
@failed_response
async def get_account(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).accounting.GetAccount, accounting_pb.GetAccountRequest()
    )
    account, balance, limits = reply.account, reply.balance, reply.limits
    notices = [{"message": n.message, "created_at": unix(n.created_at)} for n in reply.notices]
    return json_response(
        {
            "object": "account",
            "id": account.id,
            "email": account.email,
            "status": _STATUS.get(account.status, "unknown"),
            "status_reason": account.status_reason or None,
            "suspended_until": unix(account.suspended_until),
            "tier": account.tier,
            "created_at": unix(account.created_at),
            "balance_usd": balance.balance.usd,
            "held_usd": balance.held.usd,
            "available_usd": balance.available.usd,
            "total_purchased_usd": balance.total_purchased.usd,
            "limits": {
                "tier": limits.tier,
                "requests_per_minute": limits.rpm,
                "requests_per_minute_per_model": limits.model_rpm,
                "tokens_per_minute": limits.tpm,
                "pinned": limits.pinned,
            },
            "notices": notices,
            "referral_code": account.referral_code or None,
            "referral_link": reply.referral_link or None,
        },
        headers,
    )


@router.get("/v1/account/usage")
@failed_response
async def get_usage(request: Request) -> Response:
    message = accounting_pb.GetUsageRequest(
        start_day=request.query_params.get("start_day", ""),
        end_day=request.query_params.get("end_day", ""),
    )
    reply, headers = await call_core(request, stubs(request).accounting.GetUsage, message)
    rows = [
        {
            "day": row.day,
            "model": row.model,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cached_tokens": row.cached_tokens,
            "cache_write_tokens": row.cache_write_tokens,
            "reasoning_tokens": row.reasoning_tokens,
            "cost_usd": row.cost.usd,
            "estimated_requests": row.estimated_requests,
        }
        for row in reply.rows
    ]
    return json_response({"object": "list", "data": rows}, headers)


def _entry_object(entry: accounting_pb.LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "ledger.entry",
        "kind": _KIND.get(entry.kind, "unknown"),
        "amount_usd": entry.amount.usd,
        "reason": entry.reason,
        "reference": entry.reference or None,
        "created_at": unix(entry.created_at),
    }


@router.get("/v1/account/requests/{request_id}")
@failed_response
async def get_request(request_id: str, request: Request) -> Response:
    message = accounting_pb.GetRequestRecordRequest(request_id=request_id)
    reply, headers = await call_core(request, stubs(request).accounting.GetRequestRecord, message)
    record = reply.request
    tokens = record.tokens
    return json_response(
        {
            "object": "request",
            "id": record.request_id,
            "created_at": unix(record.created_at),
            "endpoint": record.endpoint,
            "model": record.model,
            "deployment": record.deployment or None,
            "status": record.status,
            "stream": record.stream,
            "latency_ms": round(record.latency_ms, 3),
            "usage": {
                "prompt_tokens": tokens.prompt_tokens,
                "completion_tokens": tokens.completion_tokens,
                "total_tokens": tokens.total_tokens,
                "cached_tokens": tokens.cached_tokens,
                "cache_write_tokens": tokens.cache_write_tokens,
                "reasoning_tokens": tokens.reasoning_tokens,
                "estimated": record.estimated,
            },
            "cost_usd": record.cost.usd,
            "ledger_entries": [_entry_object(entry) for entry in record.ledger_entries],
        },
        headers,
    )


@router.get("/v1/account/ledger")
@failed_response
async def get_ledger(request: Request) -> Response:
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 200:
        return OpenAIError(
            400, "'limit' must be a whole number from 1 to 200.", param="limit"
        ).response({"x-request-id": new_request_id()})
    message = accounting_pb.ListLedgerEntriesRequest(
        page_size=int(limit), page_token=request.query_params.get("page_token", "")
    )
    reply, headers = await call_core(request, stubs(request).accounting.ListLedgerEntries, message)
    entries = [_entry_object(entry) for entry in reply.entries]
    return json_response(
        {
            "object": "list",
            "data": entries,
            "has_more": bool(reply.next_page_token),
            "next_page_token": reply.next_page_token or None,
        },
        headers,
    )


@router.post("/v1/billing/checkout")
@failed_response
async def create_checkout(request: Request) -> Response:
    headers = {"x-request-id": new_request_id()}
    try:
        body = await read_body(request, 64 * 1024)
    except BodyTooLarge:
        return too_large(64 * 1024).response(headers)
    parsed = json_object(body)
    if isinstance(parsed, OpenAIError):
        return parsed.response(headers)
    amount = parsed.get("amount_usd")
    if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
        return OpenAIError(
            400,
            "'amount_usd' is required: a decimal number of USD, e.g. \"25\".",
            param="amount_usd",
        ).response(headers)
    # A JSON number is taken as written (repr keeps 10.5 as "10.5"); the core validates it.
    message = billing_pb.CreateCheckoutSessionRequest(amount_usd=str(amount))
    reply, headers = await call_core(request, stubs(request).billing.CreateCheckoutSession, message)
    return json_response(
        {"object": "checkout.session", "id": reply.session_id, "url": reply.url}, headers
    )


@router.post("/v1/billing/stripe/webhook")
@failed_response
async def stripe_webhook(request: Request) -> Response:
    headers = {"x-request-id": new_request_id()}
    try:
        payload = await read_body(request, MAX_WEBHOOK_BYTES)
    except BodyTooLarge:
        return too_large(MAX_WEBHOOK_BYTES).response(headers)
    signature = request.headers.get("stripe-signature", "")
    if not (signature.isascii() and signature.isprintable()):
        signature = ""
    message = billing_pb.HandleStripeWebhookRequest(payload=payload, signature=signature)
    reply, headers = await call_core(request, stubs(request).billing.HandleStripeWebhook, message)
    return json_response(
        {"received": True, "outcome": _OUTCOME.get(reply.outcome, "unknown")}, headers
    )


_REFERRAL_STATUS = {
    value: name.removeprefix("REFERRAL_STATUS_").lower()
    for name, value in accounting_pb.ReferralStatus.items()
}


@router.get("/v1/account/referrals")
@failed_response
async def get_referrals(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).accounting.ListReferrals, accounting_pb.ListReferralsRequest()
    )
    referrals = [
        {
            "id": r.id,
            "object": "referral",
            "referred_email": r.referred_email,
            "status": _REFERRAL_STATUS.get(r.status, "unknown"),
            "tokens_used": r.tokens_used,
            "tokens_required": r.tokens_required,
            "created_at": unix(r.created_at),
            "verified_at": unix(r.verified_at),
            "flagged": r.flagged,
        }
        for r in reply.referrals
    ]
    return json_response(
        {
            "object": "list",
            "data": referrals,
            "program_enabled": reply.program_enabled,
            "reward_usd": reply.reward.usd,
        },
        headers,
    )
