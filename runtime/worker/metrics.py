"""Prometheus metrics of one worker, in a registry of its own (one per app)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RequestMetrics", "WorkerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """What a worker counts."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model": model}
        self.requests = Counter(
            "edgeinfer_worker_requests",
            "Requests by route and status",
            ["model", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeinfer_worker_request_seconds",
            "Request latency (to the last byte)",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "edgeinfer_worker_inflight_requests",
            "Requests being served",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.tokens = Counter(
            "edgeinfer_worker_tokens",
            "Tokens in (prompt) and out (completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.cancelled = Counter(
            "edgeinfer_worker_generations_cancelled",
            "Generations stopped early because the client went away",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.generated = Gauge(
            "edgeinfer_worker_generated_tokens",
            "Tokens the runtime generated since load, including generations cut short",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.ttft = Histogram(
            "edgeinfer_worker_time_to_first_token_seconds",
            "Time to the first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.load_phase = Gauge(
            "edgeinfer_worker_load_phase_seconds",
            "Seconds each phase of the model load took",
            ["model", "phase"],
            registry=self.registry,
        )
        self.memory = Gauge(
            "edgeinfer_worker_model_memory_bytes",
            "Resident memory the model added when loaded",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.model = model

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.tokens.labels(self.model, "prompt").inc(prompt)
        self.tokens.labels(self.model, "completion").inc(completion)


class RequestMetrics:
    """ASGI middleware: counts requests by route template and status, and their latency."""

    def __init__(self, app: Any, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.inflight.dec()
            # The router records the matched route in the (shared) scope.
            name = getattr(scope.get("route"), "path", "unmatched")
            m.requests.labels(m.model, name, str(status)).inc()
            m.latency.labels(m.model, name).observe(time.perf_counter() - start)
