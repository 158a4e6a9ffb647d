"""Kyma's domain errors: one tree for everything a caller can get wrong or run into.

Each error carries a stable `reason` (sent to gRPC callers in google.rpc.ErrorInfo) and the
OpenAI `param` it concerns. They are mapped to gRPC status codes in one place
(`core_service.grpc_errors`) and from there to OpenAI HTTP errors in one place
(`http_bridge.errors`). Messages are written for the user: they say what to do, and they
never contain an API key.
"""

from __future__ import annotations

from datetime import datetime

from core_service.ratelimit.snapshot import RateLimitSnapshot


class KymaError(Exception):
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(KymaError):
    reason = "INVALID_REQUEST"


class Unauthenticated(KymaError):
    reason = "INVALID_API_KEY"


class AdminUnauthenticated(KymaError):
    reason = "INVALID_ADMIN_TOKEN"


class AccountSuspended(KymaError):
    reason = "ACCOUNT_SUSPENDED"

    def __init__(self, message: str, *, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


class AccountBanned(KymaError):
    reason = "ACCOUNT_BANNED"


class InsufficientCredits(KymaError):
    reason = "INSUFFICIENT_QUOTA"


class ModelNotFound(KymaError):
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class NotFound(KymaError):
    reason = "NOT_FOUND"


class AlreadyExists(KymaError):
    reason = "ALREADY_EXISTS"


class RateLimited(KymaError):
    reason = "RATE_LIMIT_EXCEEDED"

    def __init__(
        self, message: str, *, retry_after_seconds: int, snapshot: RateLimitSnapshot | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.snapshot = snapshot


class UpstreamError(KymaError):
    """The model's upstreams could not give an answer (after failover, where there was any)."""

    reason = "UPSTREAM_BAD_GATEWAY"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_seconds = retry_after_seconds


class UpstreamUnavailable(UpstreamError):
    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamTimeout(UpstreamError):
    reason = "UPSTREAM_TIMEOUT"
