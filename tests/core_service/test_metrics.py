"""Metrics children resolved once still count in the registry as `labels()` would."""

from __future__ import annotations

from core_service.metrics import CoreMetrics


def test_children_are_resolved_once_and_count_in_the_registry() -> None:
    metrics = CoreMetrics()
    first = metrics.requests_of("chat.completions", "m", "ok")
    assert metrics.requests_of("chat.completions", "m", "ok") is first
    assert first is metrics.requests.labels("chat.completions", "m", "ok")
    first.inc()
    metrics.requests_of("chat.completions", "m", "ok").inc()
    metrics.requests_of("chat.completions", "m", "INTERNAL").inc()
    metrics.latency_of("chat.completions", "m").observe(0.02)
    sample = metrics.registry.get_sample_value
    labels = {"endpoint": "chat.completions", "model": "m"}
    assert sample("kyma_requests_total", {**labels, "status": "ok"}) == 2
    assert sample("kyma_requests_total", {**labels, "status": "INTERNAL"}) == 1
    assert sample("kyma_request_duration_seconds_count", labels) == 1
