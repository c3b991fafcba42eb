"""The dashboard's memory: per model, samples of its pool over time, the autoscaler's
decisions as they changed, its cold starts with their phases, and the latencies of
its recent requests. Every series is bounded (:data:`SAMPLES`, :data:`EVENTS`,
:data:`LATENCIES`) and keyed by configured model names only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.scaling.replica import ColdStart
from runtime.scaling.source import ReplicaSource

__all__ = ["EVENTS", "LATENCIES", "SAMPLES", "History", "percentiles"]

SAMPLES = 600  # one a second: ten minutes
EVENTS = 50
LATENCIES = 1024
WINDOW_S = 60.0  # percentiles over the requests of the last minute


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in milliseconds (nearest rank), None when there are none."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)
    n = len(ordered)
    return {
        f"p{q}": round(ordered[min(n - 1, max(0, -(-q * n // 100) - 1))] * 1000, 2)
        for q in (50, 95, 99)
    }


@dataclass
class _Model:
    samples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS))
    cold_starts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS))
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LATENCIES))
    ttfts: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LATENCIES))
    requests: int = 0
    errors: int = 0
    counted: int = 0  # requests at the last sample


class History:
    """Fed by the gateway (``request``, ``cold_start``) and by :meth:`run`'s sampling."""

    def __init__(self, supervisor: ReplicaSource, clock: Callable[[], float] = time.time) -> None:
        self.supervisor = supervisor
        self.clock = clock  # Unix seconds: what the page shows
        self.models: dict[str, _Model] = {}

    def _model(self, name: str) -> _Model | None:
        m = self.models.get(name)  # per request: no _Model built to be thrown away
        if m is None:
            if name not in self.supervisor.pools:
                return None  # "-", "(unknown)": nothing to chart
            m = self.models[name] = _Model()
        return m

    def request(self, model: str, latency: float, ttft: float | None, status: int) -> None:
        m = self._model(model)
        if m is None:
            return
        now = self.clock()
        m.requests += 1
        m.errors += status >= 500
        m.latencies.append((now, latency))
        if ttft is not None:
            m.ttfts.append((now, ttft))

    def cold_start(self, model: str, cold: ColdStart) -> None:
        m = self._model(model)
        if m is not None:
            m.cold_starts.append(
                {
                    "at": round(self.clock(), 3),
                    "total_ms": round(cold.total * 1000, 1),
                    "phases_ms": {k: round(v * 1000, 1) for k, v in cold.phases.items()},
                }
            )

    def sample(self) -> None:
        """One sample of every pool, and a decision event where the autoscaler's
        desired count or reason changed since the last."""
        now = self.clock()
        for name, pool in self.supervisor.pools.items():
            m = self._model(name)
            assert m is not None
            s = pool.status()
            last = m.samples[-1] if m.samples else None
            seconds = now - last["t"] if last else 0.0
            rps = (m.requests - m.counted) / seconds if seconds > 0 else 0.0
            m.counted = m.requests
            m.samples.append(
                {
                    "t": round(now, 3),
                    "ready": s.ready,
                    "starting": s.starting,
                    "draining": s.draining,
                    "desired": s.desired,
                    "queued": s.queued,
                    "in_flight": s.in_flight,
                    "bridge_served": s.bridge_served,
                    "rps": round(rps, 3),
                }
            )
            previous = m.decisions[-1] if m.decisions else None
            if previous is None or (previous["desired"], previous["reason"]) != (
                s.desired,
                s.reason,
            ):
                m.decisions.append(
                    {"t": round(now, 3), "desired": s.desired, "reason": s.reason, "panic": s.panic}
                )

    async def run(self, period: float = 1.0) -> None:
        """Sample every ``period`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(period)

    def view(self, model: str) -> dict[str, Any]:
        """What the dashboard shows of ``model`` beyond ``/admin/models``."""
        m = self.models.get(model) or _Model()
        since = self.clock() - WINDOW_S
        return {
            "samples": list(m.samples),
            "decisions": list(m.decisions),
            "cold_starts": list(m.cold_starts),
            "requests": m.requests,
            "errors": m.errors,
            "latency_ms": percentiles([v for t, v in m.latencies if t >= since]),
            "ttft_ms": percentiles([v for t, v in m.ttfts if t >= since]),
        }
