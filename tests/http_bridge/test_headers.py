from __future__ import annotations

from http_bridge.headers import format_duration, rate_limit_headers
from kyma.ratelimit.v1 import ratelimit_pb2


def test_durations_in_openai_format() -> None:
    assert format_duration(0) == "0ms"
    assert format_duration(250) == "250ms"
    assert format_duration(1000) == "1s"
    assert format_duration(1001) == "2s"
    assert format_duration(360_000) == "6m0s"
    assert format_duration(3_723_000) == "1h2m3s"


def test_headers_only_when_limits_are_known() -> None:
    assert rate_limit_headers(ratelimit_pb2.RateLimitStatus()) == {}
    headers = rate_limit_headers(
        ratelimit_pb2.RateLimitStatus(
            limit_requests=30,
            remaining_requests=29,
            reset_requests_ms=2000,
            limit_tokens=200_000,
            remaining_tokens=199_000,
            reset_tokens_ms=300,
        )
    )
    assert headers["x-ratelimit-remaining-requests"] == "29"
    assert headers["x-ratelimit-reset-tokens"] == "300ms"
    assert len(headers) == 6


def test_metric_routes_are_templates() -> None:
    from http_bridge.metrics import route_of

    assert route_of("/v1/chat/completions") == "/v1/chat/completions"
    assert route_of("/v1/models/meta/llama-3") == "/v1/models/{model}"
    assert route_of("/v1/account/keys/key_123") == "/v1/account/keys/{key_id}"
    # Every dialect's endpoints by name (they were all "other" once).
    for path in ("/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/v1/status"):
        assert route_of(path) == path
    assert route_of("/v1/responses/resp_1") == "/v1/responses/{response_id}"
    assert route_of("/v1/account/requests/req_1") == "/v1/account/requests/{request_id}"
    assert route_of("/v1/account/usage") == "/v1/account/usage"
    assert route_of("/wp-admin/../../etc/passwd") == "other"
