"""The account holder's endpoints (`/v1/account…`) and Stripe billing (`/v1/billing…`),
called with an API key or the console's web session (the core decides which counts)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import field_mask_pb2
from starlette.responses import Response

from http_bridge.bodies import (
    BodyTooLarge,
    bad_field,
    json_object,
    json_response,
    read_body,
    small_json,
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


def _terms(terms: accounting_pb.TermsAcceptance) -> dict[str, Any]:
    return {
        "accepted_version": terms.accepted_version or None,
        "accepted_at": unix(terms.accepted_at),
        "current_version": terms.current_version,
        "needs_acceptance": terms.needs_acceptance,
        "in_use_version": terms.in_use_version or None,
        "in_use_since": unix(terms.in_use_since),
    }


def _account_object(reply: accounting_pb.GetAccountResponse) -> dict[str, Any]:
    account, balance, limits = reply.account, reply.balance, reply.limits
    notices = [
        {"kind": n.kind or "warning", "message": n.message, "created_at": unix(n.created_at)}
        for n in reply.notices
    ]
    return {
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
        "terms": _terms(reply.terms),
        "low_balance_threshold_usd": reply.low_balance_threshold.usd
        if reply.HasField("low_balance_threshold")
        else None,
    }


@router.get("/v1/account")
@failed_response
async def get_account(request: Request) -> Response:
    reply, headers = await call_core(
        request, stubs(request).accounting.GetAccount, accounting_pb.GetAccountRequest()
    )
    return json_response(_account_object(reply), headers)


@router.patch("/v1/account")
@failed_response
async def update_account(request: Request) -> Response:
    body = await small_json(request, 16 * 1024)
    if isinstance(body, Response):
        return body
    message = accounting_pb.UpdateAccountRequest()
    unknown = sorted(set(body) - {"low_balance_threshold_usd"})
    if unknown:
        return bad_field(unknown[0], f"'{unknown[0]}' cannot be changed here.")
    if "low_balance_threshold_usd" in body:
        value = body["low_balance_threshold_usd"]
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                return bad_field(
                    "low_balance_threshold_usd",
                    "'low_balance_threshold_usd' is a decimal amount of USD, e.g. \"5\", or null.",
                )
            message.low_balance_threshold_usd = str(value)
        message.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=["low_balance_threshold_usd"]))
    reply, headers = await call_core(request, stubs(request).accounting.UpdateAccount, message)
    return json_response(_account_object(reply.account), headers)


@router.post("/v1/account/terms/accept")
@failed_response
async def accept_terms(request: Request) -> Response:
    body = await small_json(request, 16 * 1024)
    if isinstance(body, Response):
        return body
    version = body.get("version")
    if not isinstance(version, str):
        return bad_field("version", "'version' is the terms version accepted (GET /v1/terms).")
    reply, headers = await call_core(
        request,
        stubs(request).accounting.AcceptTerms,
        accounting_pb.AcceptTermsRequest(version=version),
    )
    return json_response({"object": "terms.acceptance", **_terms(reply.terms)}, headers)


@router.get("/v1/account/requests")
@failed_response
async def list_requests(request: Request) -> Response:
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 200:
        return bad_field("limit", "'limit' must be a whole number from 1 to 200.")
    message = accounting_pb.ListRequestsRequest(
        page_size=int(limit), page_token=request.query_params.get("page_token", "")
    )
    reply, headers = await call_core(request, stubs(request).accounting.ListRequests, message)
    rows = [
        {
            "object": "request",
            "id": r.request_id,
            "created_at": unix(r.created_at),
            "endpoint": r.endpoint,
            "model": r.model,
            "status": r.status,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost.usd,
            "estimated": r.estimated,
            "stream": r.stream,
            "key_id": r.key_id or None,
        }
        for r in reply.requests
    ]
    return json_response(
        {
            "object": "list",
            "data": rows,
            "has_more": bool(reply.next_page_token),
            "next_page_token": reply.next_page_token or None,
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
    reply, headers = await call_core(
        request, stubs(request).billing.HandleStripeWebhook, message, session=False
    )
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
            "tokens_required": reply.tokens_required,
        },
        headers,
    )
