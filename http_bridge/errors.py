"""gRPC status → OpenAI HTTP error, in one place.

The core's ErrorInfo reason decides the HTTP status, OpenAI `type` and `code`; the gRPC code
decides only when there is no reason (the core unreachable, a deadline). Bodies are OpenAI's:
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import logging

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.responses import Response

from http_bridge.headers import limit_headers
from kyma.contract.v1.constants import ErrorReason

log = logging.getLogger(__name__)

# The trailer that carries a call's google.rpc.Status (grpc-status-details-bin; the library's
# typing stubs lack the name).
STATUS_DETAILS_KEY: str = rpc_status.GRPC_DETAILS_METADATA_KEY  # type: ignore[attr-defined]
_REASONS = frozenset(ErrorReason)

# Every reason of the contract → (HTTP status, OpenAI type, OpenAI code).
BY_REASON: dict[ErrorReason, tuple[int, str, str | None]] = {
    ErrorReason.INTERNAL: (500, "api_error", "internal_error"),
    ErrorReason.INVALID_REQUEST: (400, "invalid_request_error", None),
    ErrorReason.INVALID_API_KEY: (401, "invalid_request_error", "invalid_api_key"),
    ErrorReason.INVALID_ADMIN_TOKEN: (401, "invalid_request_error", "invalid_api_key"),
    ErrorReason.INSUFFICIENT_QUOTA: (402, "insufficient_quota", "insufficient_quota"),
    ErrorReason.ACCOUNT_SUSPENDED: (403, "permission_error", "account_suspended"),
    ErrorReason.ACCOUNT_BANNED: (403, "permission_error", "account_banned"),
    ErrorReason.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    ErrorReason.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    ErrorReason.ALREADY_EXISTS: (409, "invalid_request_error", "already_exists"),
    ErrorReason.IDEMPOTENCY_CONFLICT: (409, "invalid_request_error", "idempotency_conflict"),
    ErrorReason.RATE_LIMIT_EXCEEDED: (429, "requests", "rate_limit_exceeded"),
    ErrorReason.UPSTREAM_BAD_GATEWAY: (502, "api_error", "upstream_error"),
    ErrorReason.UPSTREAM_UNAVAILABLE: (503, "api_error", "upstream_unavailable"),
    ErrorReason.UPSTREAM_TIMEOUT: (504, "api_error", "upstream_timeout"),
    ErrorReason.BILLING_NOT_CONFIGURED: (503, "api_error", "billing_not_configured"),
    ErrorReason.PAYMENT_PROVIDER_ERROR: (502, "api_error", "payment_provider_error"),
    ErrorReason.MAIL_UNAVAILABLE: (503, "api_error", "mail_unavailable"),
    ErrorReason.SERVICE_UNAVAILABLE: (503, "api_error", "service_unavailable"),
    ErrorReason.CSRF_FAILED: (403, "permission_error", "csrf_failed"),
    ErrorReason.INVALID_SESSION: (401, "invalid_request_error", "invalid_session"),
    ErrorReason.KEY_EXPIRED: (401, "invalid_request_error", "key_expired"),
    ErrorReason.MODEL_NOT_ALLOWED: (403, "permission_error", "model_not_allowed"),
    ErrorReason.KEY_SPEND_CAP_REACHED: (403, "permission_error", "key_spend_cap_reached"),
    ErrorReason.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
}

_BY_CODE: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", None),
    # Without Kyma's reason, RESOURCE_EXHAUSTED is gRPC's own: a message or metadata over its
    # size limits, never a rate limit (those always carry RATE_LIMIT_EXCEEDED).
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, "invalid_request_error", "request_too_large"),
    grpc.StatusCode.UNAVAILABLE: (503, "api_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "api_error", "timeout"),
}


_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "Kyma's core service is unavailable. Please retry shortly.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "The request is larger than Kyma accepts.",
}


class OpenAIError:
    """An error as the bridge sends it (in OpenAI's shape; `http_bridge.anthropic` renders the
    same error in Anthropic's)."""

    __slots__ = ("status", "message", "type", "param", "code", "retry_after", "headers", "reason")

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
        reason: ErrorReason | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def response(self, headers: dict[str, str]) -> Response:
        headers = {**headers, **self.headers}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return Response(self.body(), self.status, headers, media_type="application/json")


def _status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed trailer is treated as absent
                return None
            return status
    return None


def from_grpc(error: grpc.aio.AioRpcError) -> OpenAIError:
    status = _status_details(error)
    reason, param, retry_after = None, None, None
    headers: dict[str, str] = {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                param = info.metadata.get("param") or None
                headers = limit_headers(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = max(1, retry.retry_delay.seconds + (retry.retry_delay.nanos > 0))
    known = reason is not None and reason in _REASONS
    mapped = (
        BY_REASON[ErrorReason(reason)]
        if reason is not None and known
        else _BY_CODE.get(error.code())
    )
    if mapped is None:
        # Nothing says what went wrong: keep what gRPC said (a status and its text; never a
        # key: the core's messages hold none) for whoever reads the logs.
        log.warning("a call on the core failed: %s %s", error.code().name, error.details())
        return OpenAIError(
            500,
            "Kyma had an internal error. Please retry; if it persists, contact support.",
            "api_error",
            code="internal_error",
        )
    http_status, type_, code = mapped
    message = error.details() or "Request failed."
    if not known and error.code() in _TRANSPORT_MESSAGES:
        # gRPC's own words name its internals ("received metadata size exceeds hard limit").
        message = _TRANSPORT_MESSAGES[error.code()]
    if not known and error.code() == grpc.StatusCode.UNAVAILABLE:
        # No core answered (none reachable or healthy, or the connection broke).
        retry_after = retry_after or 1
    return OpenAIError(
        http_status,
        message,
        type_,
        param=param,
        code=code,
        retry_after=retry_after,
        headers=headers,
        reason=ErrorReason(reason) if reason is not None and known else None,
    )
