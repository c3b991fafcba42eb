"""The gateway's Prometheus metrics, in a registry of their own (one per app).

Label values are a fixed set: configured model names, ``-`` (a route that names no
model) and ``(unknown)`` for any name a client made up, so no stranger can add series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime.scaling.source import ReplicaSource

__all__ = ["NO_MODEL", "UNKNOWN_MODEL", "GatewayMetrics"]

NO_MODEL = "-"
UNKNOWN_MODEL = "(unknown)"

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COLD = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class _PoolCollector(Collector):
    """Replicas, queue depth and in-flight per model, read from the supervisor on scrape."""

    def __init__(self, supervisor: ReplicaSource) -> None:
        self.supervisor = supervisor

    def collect(self):  # type: ignore[no-untyped-def]
        replicas = GaugeMetricFamily(
            "edgeinfer_replicas", "Replicas per model and state", labels=["model", "state"]
        )
        queued = GaugeMetricFamily(
            "edgeinfer_queue_depth", "Requests waiting for a replica", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "edgeinfer_in_flight_requests", "Requests on replicas", labels=["model"]
        )
        desired = GaugeMetricFamily(
            "edgeinfer_desired_replicas", "The autoscaler's last decision", labels=["model"]
        )
        bridged = CounterMetricFamily(
            "edgeinfer_bridge_requests",
            "Requests a bridge tier served while the primary started",
            labels=["model"],
        )
        moves = CounterMetricFamily(
            "edgeinfer_placement_moves", "Moves of a model to a new tier", labels=["model"]
        )
        for name, pool in self.supervisor.pools.items():
            s = pool.status()
            bridged.add_metric([name], s.bridge_served)
            moves.add_metric([name], s.moves)
            for state, n in (
                ("ready", s.ready),
                ("starting", s.starting),
                ("draining", s.draining),
            ):
                replicas.add_metric([name, state], n)
            queued.add_metric([name], s.queued)
            in_flight.add_metric([name], s.in_flight)
            desired.add_metric([name], s.desired)
        yield from (replicas, queued, in_flight, desired, bridged, moves)


class GatewayMetrics:
    def __init__(self, supervisor: ReplicaSource, models: Iterable[str]) -> None:
        self.models = frozenset(models) | {NO_MODEL}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgeinfer_requests",
            "Requests by model, route and status",
            ["model", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeinfer_request_seconds",
            "Request latency at the gateway, to the last byte",
            ["model", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.cold_start = Histogram(
            "edgeinfer_cold_start_seconds",
            "Replica cold starts by phase",
            ["model", "phase"],
            buckets=_COLD,
            registry=r,
        )
        self.ttft = Histogram(
            "edgeinfer_time_to_first_token_seconds",
            "Streams: request to first event",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "edgeinfer_time_per_output_token_seconds",
            "Streams: mean time between events",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "edgeinfer_tokens",
            "Tokens in (prompt) and out (completion), from usage",
            ["model", "kind"],
            registry=r,
        )
        r.register(_PoolCollector(supervisor))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    def model_label(self, model: str) -> str:
        """``model`` when it is configured (or ``-``), else ``(unknown)``."""
        return model if model in self.models else UNKNOWN_MODEL

    def count(self, model: str, route: str, status: int) -> None:
        """Count one request without its latency (a shed request: a counter only)."""
        model = self.model_label(model)
        key = (model, route, status)
        child = self._counts.get(key)
        if child is None:
            child = self._counts[key] = self.requests.labels(model, route, str(status))
        child.inc()

    def observe_request(self, model: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (label children cached: this is per
        request). ``route`` must be one of the app's fixed route names."""
        model = self.model_label(model)
        key = (model, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, route, str(status)),
                self.latency.labels(model, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
