"""Kyma's domain errors: one tree for everything a caller can get wrong or run into.

Each error declares its `reason`, a value of the contract's `ErrorReason` (the enum in
protos/kyma/contract/v1/contract.proto, shared with the bridge and internal gRPC callers), and
the OpenAI `param` it concerns. The reason alone decides how the error reaches a caller: the
gRPC status code (`core_service.edge.errors`) and the HTTP status and error code
(`http_bridge.errors`), each keyed by it. Messages are written for the user: they say what to
do, and they never contain an API key.
"""

from __future__ import annotations

from datetime import datetime

from core_service.values import RateLimitSnapshot
from kyma.contract.v1.constants import ErrorReason


class KymaError(Exception):
    reason: ErrorReason = ErrorReason.INTERNAL

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(KymaError):
    reason = ErrorReason.INVALID_REQUEST


class Unauthenticated(KymaError):
    reason = ErrorReason.INVALID_API_KEY


class AdminUnauthenticated(KymaError):
    reason = ErrorReason.INVALID_ADMIN_TOKEN


class AccountSuspended(KymaError):
    reason = ErrorReason.ACCOUNT_SUSPENDED

    def __init__(self, message: str, *, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


class AccountBanned(KymaError):
    reason = ErrorReason.ACCOUNT_BANNED


class InsufficientCredits(KymaError):
    reason = ErrorReason.INSUFFICIENT_QUOTA


class ModelNotFound(KymaError):
    reason = ErrorReason.MODEL_NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class NotFound(KymaError):
    reason = ErrorReason.NOT_FOUND


class AlreadyExists(KymaError):
    reason = ErrorReason.ALREADY_EXISTS


class RateLimited(KymaError):
    reason = ErrorReason.RATE_LIMIT_EXCEEDED

    def __init__(
        self, message: str, *, retry_after_seconds: int, snapshot: RateLimitSnapshot | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.snapshot = snapshot


class UpstreamError(KymaError):
    """The model's upstreams could not give an answer (after failover, where there was any)."""

    reason = ErrorReason.UPSTREAM_BAD_GATEWAY

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_seconds = retry_after_seconds


class UpstreamUnavailable(UpstreamError):
    reason = ErrorReason.UPSTREAM_UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    reason = ErrorReason.UPSTREAM_TIMEOUT


class IdempotencyConflict(KymaError):
    """An idempotency key was used before for a different ledger entry."""

    reason = ErrorReason.IDEMPOTENCY_CONFLICT


class BillingNotConfigured(KymaError):
    """Purchases are switched off on this installation (no Stripe keys)."""

    reason = ErrorReason.BILLING_NOT_CONFIGURED


class PaymentProviderError(KymaError):
    """The payment provider failed or refused; the purchase did not start."""

    reason = ErrorReason.PAYMENT_PROVIDER_ERROR


class MailUnavailable(KymaError):
    """A mail Kyma had to send (a sign-up code) did not go out."""

    reason = ErrorReason.MAIL_UNAVAILABLE


class ServiceUnavailable(KymaError):
    """Kyma cannot serve right now (its database does not answer); retrying later helps."""

    reason = ErrorReason.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class CsrfFailed(KymaError):
    """A state-changing call authenticated by a web session came without its CSRF token."""

    reason = ErrorReason.CSRF_FAILED


class InvalidSession(KymaError):
    """The web session is missing, unknown, expired or ended."""

    reason = ErrorReason.INVALID_SESSION


class KeyExpired(KymaError):
    reason = ErrorReason.KEY_EXPIRED


class ModelNotAllowed(KymaError):
    reason = ErrorReason.MODEL_NOT_ALLOWED


class KeySpendCapReached(KymaError):
    reason = ErrorReason.KEY_SPEND_CAP_REACHED


class PermissionDenied(KymaError):
    """The credential may not do this (a limited key managing keys)."""

    reason = ErrorReason.PERMISSION_DENIED
