"""What the dashboard remembers: pool samples, decisions only when they change, cold
starts, percentiles, nothing for names that are not configured models. Pools come from
the real supervisor over a FAKE launcher (``tests/runtime/scaling/fakes.py``)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dashboard.history import History, percentiles
from runtime.scaling.replica import ColdStart
from runtime.scaling.supervisor import Supervisor
from runtime.spec.model import ModelConfig
from tests.gateway.conftest import MINILM
from tests.runtime.scaling.fakes import FakeClock, FakeLauncher, settle


@pytest.mark.parametrize(
    ("values", "p50", "p95", "p99"),
    [
        ([], None, None, None),
        ([0.010], 10.0, 10.0, 10.0),
        ([i / 1000 for i in range(1, 101)], 50.0, 95.0, 99.0),
        ([0.001, 0.002, 0.003, 1.0], 2.0, 1000.0, 1000.0),
    ],
)
def test_percentiles_are_nearest_rank_in_ms(
    values: list[float], p50: float | None, p95: float | None, p99: float | None
) -> None:
    assert percentiles(values) == {"p50": p50, "p95": p95, "p99": p99}


def test_samples_decisions_cold_starts_and_requests() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        launcher = FakeLauncher()
        spec = {**MINILM, "scaling": {"initial-scale": 0}}
        config = ModelConfig.model_validate({"models": [spec], "source": "t.yaml"})
        supervisor = Supervisor(config, launcher=launcher, clock=clock, tick=3600)
        await supervisor.start()
        now = [5000.0]
        history = History(supervisor, clock=lambda: now[0])
        history.sample()
        pool = supervisor.pool("minilm")
        pool.scale_up(1)
        await settle()
        now[0] += 1
        history.sample()
        launcher.ready(0, load_s=0.5)
        await settle()
        history.cold_start("minilm", ColdStart({"spawn": 0.1, "load": 0.5}, 0.0))
        history.cold_start("(unknown)", ColdStart({"spawn": 0.1}, 0.0))
        for latency in (0.01, 0.02, 0.03):
            history.request("minilm", latency, None, 200)
        history.request("minilm", 0.5, 0.2, 503)
        history.request("-", 0.001, None, 404)
        now[0] += 2
        history.sample()
        pool.autoscale(clock())
        now[0] += 1
        history.sample()
        history.sample()
        view = history.view("minilm")
        states = [(s["ready"], s["starting"]) for s in view["samples"]]
        assert states[:3] == [(0, 0), (0, 1), (1, 0)]
        assert view["samples"][2]["rps"] == 2.0  # 4 requests over 2 s
        assert view["requests"] == 4 and view["errors"] == 1
        assert view["latency_ms"]["p50"] == 20.0 and view["ttft_ms"]["p50"] == 200.0
        assert view["cold_starts"] == [
            {"at": 5001.0, "total_ms": 600.0, "phases_ms": {"spawn": 100.0, "load": 500.0}}
        ]
        # A decision is kept when the desired count or the reason changed, not per sample.
        decisions = [(d["t"], d["desired"], d["reason"][:7]) for d in view["decisions"]]
        assert decisions == [
            (5000.0, 0, "no deci"),
            (5001.0, 1, "no deci"),
            (5004.0, 1, "stable:"),
        ]
        assert set(history.models) == {"minilm"}
        await supervisor.stop()

    asyncio.run(scenario())
