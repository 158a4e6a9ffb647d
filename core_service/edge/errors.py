"""Domain errors → gRPC status, keyed by the error's reason (the contract's `ErrorReason`).

Every error carries a google.rpc.Status with an ErrorInfo (the contract's domain, the error's
reason, and `param` when it concerns one field) and, where waiting helps, a RetryInfo.
Unexpected exceptions reach the caller as INTERNAL with the request id only: never a stack
trace, never a key. The interceptor that applies this to every call is in `interceptors.py`.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core_service import errors
from kyma.contract.v1.constants import ERROR_DOMAIN, ErrorReason

# Every reason the contract defines, and the gRPC code a caller gets for it.
GRPC_CODES: dict[ErrorReason, int] = {
    ErrorReason.INTERNAL: code_pb2.INTERNAL,
    ErrorReason.INVALID_REQUEST: code_pb2.INVALID_ARGUMENT,
    ErrorReason.INVALID_API_KEY: code_pb2.UNAUTHENTICATED,
    ErrorReason.INVALID_ADMIN_TOKEN: code_pb2.UNAUTHENTICATED,
    ErrorReason.ACCOUNT_SUSPENDED: code_pb2.PERMISSION_DENIED,
    ErrorReason.ACCOUNT_BANNED: code_pb2.PERMISSION_DENIED,
    ErrorReason.INSUFFICIENT_QUOTA: code_pb2.FAILED_PRECONDITION,
    ErrorReason.MODEL_NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorReason.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorReason.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorReason.RATE_LIMIT_EXCEEDED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorReason.UPSTREAM_BAD_GATEWAY: code_pb2.UNAVAILABLE,
    ErrorReason.UPSTREAM_UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorReason.UPSTREAM_TIMEOUT: code_pb2.DEADLINE_EXCEEDED,
    ErrorReason.IDEMPOTENCY_CONFLICT: code_pb2.ALREADY_EXISTS,
    ErrorReason.BILLING_NOT_CONFIGURED: code_pb2.FAILED_PRECONDITION,
    ErrorReason.PAYMENT_PROVIDER_ERROR: code_pb2.UNAVAILABLE,
    ErrorReason.MAIL_UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorReason.SERVICE_UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorReason.CSRF_FAILED: code_pb2.PERMISSION_DENIED,
    ErrorReason.INVALID_SESSION: code_pb2.UNAUTHENTICATED,
    ErrorReason.KEY_EXPIRED: code_pb2.UNAUTHENTICATED,
    ErrorReason.MODEL_NOT_ALLOWED: code_pb2.PERMISSION_DENIED,
    ErrorReason.KEY_SPEND_CAP_REACHED: code_pb2.PERMISSION_DENIED,
    ErrorReason.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
}


def _packed(details: list[Message]) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return packed


# A status travels in the call's trailing metadata (message and details), which gRPC bounds
# (16 KiB by default, the hard limit): a longer one reaches the caller as RESOURCE_EXHAUSTED
# with gRPC's own words instead. Messages are written short; this keeps any that quote input.
# The trailer that carries a call's google.rpc.Status (grpc-status-details-bin; the library's
# typing stubs lack the name).
STATUS_DETAILS_KEY: str = rpc_status.GRPC_DETAILS_METADATA_KEY  # type: ignore[attr-defined]

MAX_MESSAGE_CHARS = 2000


def to_status(error: errors.KymaError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    if error.param:
        info.metadata["param"] = error.param
    until = getattr(error, "until", None)
    if until is not None:
        info.metadata["until"] = until.isoformat()
    details: list[Message] = [info]
    if isinstance(error, errors.RateLimited) and error.snapshot is not None:
        info.metadata.update(error.snapshot.as_metadata())
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        )
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    status = status_pb2.Status(
        code=GRPC_CODES[error.reason], message=message, details=_packed(details)
    )
    return rpc_status.to_status(status)


def internal_status(request_id: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=ErrorReason.INTERNAL, domain=ERROR_DOMAIN)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"Kyma had an internal error; the request id is {request_id}.",
            details=_packed([info]),
        )
    )
