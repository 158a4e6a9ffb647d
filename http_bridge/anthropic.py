"""Anthropic's side of the bridge: the key may come as `x-api-key` (what Anthropic's SDKs and
Claude Code send) as well as `Authorization: Bearer`; `anthropic-version` is accepted and
`anthropic-beta` is passed on; errors have Anthropic's shape,
`{"type": "error", "error": {"type", "message"}, "request_id"}`, with the same HTTP statuses
as the OpenAI endpoints (402 for no credit, which Anthropic's SDK raises as a typed status
error, never retried as a rate limit)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from http_bridge.errors import OpenAIError
from kyma.contract.v1.constants import ErrorReason

# Every reason of the contract → Anthropic's error type (the HTTP status is the OpenAI one).
BY_REASON: dict[ErrorReason, str] = {
    ErrorReason.INTERNAL: "api_error",
    ErrorReason.INVALID_REQUEST: "invalid_request_error",
    ErrorReason.INVALID_API_KEY: "authentication_error",
    ErrorReason.INVALID_ADMIN_TOKEN: "authentication_error",
    ErrorReason.INSUFFICIENT_QUOTA: "billing_error",
    ErrorReason.ACCOUNT_SUSPENDED: "permission_error",
    ErrorReason.ACCOUNT_BANNED: "permission_error",
    ErrorReason.MODEL_NOT_FOUND: "not_found_error",
    ErrorReason.NOT_FOUND: "not_found_error",
    ErrorReason.ALREADY_EXISTS: "invalid_request_error",
    ErrorReason.IDEMPOTENCY_CONFLICT: "invalid_request_error",
    ErrorReason.RATE_LIMIT_EXCEEDED: "rate_limit_error",
    ErrorReason.UPSTREAM_BAD_GATEWAY: "api_error",
    ErrorReason.UPSTREAM_UNAVAILABLE: "overloaded_error",
    ErrorReason.UPSTREAM_TIMEOUT: "timeout_error",
    ErrorReason.BILLING_NOT_CONFIGURED: "api_error",
    ErrorReason.PAYMENT_PROVIDER_ERROR: "api_error",
    ErrorReason.MAIL_UNAVAILABLE: "api_error",
    ErrorReason.SERVICE_UNAVAILABLE: "overloaded_error",
    ErrorReason.CSRF_FAILED: "permission_error",
    ErrorReason.INVALID_SESSION: "authentication_error",
    ErrorReason.KEY_EXPIRED: "authentication_error",
    ErrorReason.MODEL_NOT_ALLOWED: "permission_error",
    ErrorReason.KEY_SPEND_CAP_REACHED: "permission_error",
    ErrorReason.PERMISSION_DENIED: "permission_error",
}
# For errors the bridge makes itself, or that carry no reason.
_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(error: OpenAIError) -> str:
    if error.reason is not None:
        return BY_REASON[error.reason]
    return _BY_STATUS.get(error.status, "api_error")


def error_body(error: OpenAIError, request_id: str | None = None) -> bytes:
    body: dict[str, object] = {
        "type": "error",
        "error": {"type": error_type(error), "message": error.message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_response(error: OpenAIError, headers: dict[str, str]) -> Response:
    headers = {**headers, **error.headers}
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    body = error_body(error, headers.get("x-request-id"))
    return Response(body, error.status, headers, media_type="application/json")


def authorization(given: str | None, api_key: str | None) -> str | None:
    """The caller's key as the core reads it: `Authorization`, else `x-api-key`."""
    if given is None and api_key is not None:
        return f"Bearer {api_key}"
    return given
