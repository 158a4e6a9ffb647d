"""Every core error reason maps to the OpenAI status, type and code the SDK expects."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import orjson
import pytest

from core_service import errors
from core_service.edge.errors import to_status
from http_bridge.errors import from_grpc


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(
            status.code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*status.trailing_metadata),
            status.details,
        )


@pytest.mark.parametrize(
    "error, http_status, code",
    [
        (errors.InvalidRequest("bad", param="messages"), 400, None),
        (errors.Unauthenticated("no"), 401, "invalid_api_key"),
        (errors.InsufficientCredits("poor"), 402, "insufficient_quota"),
        (
            errors.AccountSuspended("wait", until=datetime(2030, 1, 1, tzinfo=UTC)),
            403,
            "account_suspended",
        ),
        (errors.AccountBanned("gone"), 403, "account_banned"),
        (errors.ModelNotFound("m"), 404, "model_not_found"),
        (errors.RateLimited("slow", retry_after_seconds=7), 429, "rate_limit_exceeded"),
        (errors.UpstreamError("x"), 502, "upstream_error"),
        (errors.UpstreamUnavailable("x"), 503, "upstream_unavailable"),
        (errors.UpstreamTimeout("x"), 504, "upstream_timeout"),
    ],
)
def test_reason_to_http(error: errors.KymaError, http_status: int, code: str | None) -> None:
    mapped = from_grpc(_FakeRpcError(to_status(error)))
    assert mapped.status == http_status and mapped.code == code
    body = orjson.loads(mapped.body())["error"]
    assert body["message"] == error.message and body["param"] == error.param
    if isinstance(error, errors.RateLimited):
        assert mapped.retry_after == 7


def test_core_unreachable_is_503_without_internals() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "failed to connect to all addresses; last error: 127.0.0.1:50051",
    )
    mapped = from_grpc(error)
    assert mapped.status == 503 and "127.0.0.1" not in mapped.message


def test_unknown_status_is_a_clean_500() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom"
    )
    mapped = from_grpc(error)
    assert mapped.status == 500 and mapped.code == "internal_error"
