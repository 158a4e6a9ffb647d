"""Prometheus metrics of one core process, in a registry of its own (no global registry), served
on the metrics port by prometheus_client's small HTTP server in a thread of its own.

Counters and histograms are updated as requests end, through `Children`: each combination of
label values is resolved to its child once (prometheus_client's `labels()` validates and locks
on every call); gauges that describe state (breakers, the limiter, background work) are read
from their owners at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


M = TypeVar("M", Counter, Histogram)


class Children(Generic[M]):
    """A metric's child for each combination of label values, resolved once. There are no more
    of them than the metric itself keeps (it keeps every child it made)."""

    __slots__ = ("_metric", "_resolved")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._resolved: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._resolved.get(values)
        if child is None:
            child = self._resolved[values] = self._metric.labels(*values)
        return child


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._read()


class CoreMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kyma_requests",
            "Inference requests by endpoint, model and outcome",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kyma_request_duration_seconds",
            "Inference request duration",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "kyma_time_to_first_token_seconds",
            "Time to a stream's first chunk",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "kyma_tokens", "Tokens used, by model and kind", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "kyma_cost_nanodollars", "What requests cost, in nano-dollars", ["model"], registry=r
        )
        self.upstream_errors = Counter(
            "kyma_upstream_errors", "Failed upstream attempts", ["model", "deployment"], registry=r
        )
        self.limiter = Counter(
            "kyma_ratelimit_decisions", "Rate-limit decisions", ["decision"], registry=r
        )
        self.holds = Counter(
            "kyma_holds", "Credit holds by how they ended", ["outcome"], registry=r
        )

        # The children the request path updates, resolved once per label combination.
        self.requests_of = Children(self.requests)
        self.latency_of = Children(self.latency)
        self.ttft_of = Children(self.ttft)
        self.tokens_of = Children(self.tokens)
        self.cost_of = Children(self.cost)
        self.upstream_errors_of = Children(self.upstream_errors)
        self.limiter_of = Children(self.limiter)

    def watch(self, read: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Register gauges read at scrape time."""
        self.registry.register(_StateCollector(read))


def gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
