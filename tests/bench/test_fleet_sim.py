"""bench/fleet_sim.py's parts on hand-made models: the replay holds a replica for its
keep-alive after the last request (not to midnight), and the floor counts what no
policy avoids for a model only a GPU serves in time."""

from __future__ import annotations

import numpy as np
import pytest

from bench.fleet_accounting import memory_gpu_hours, model_floor_seconds
from bench.fleet_replay import TierSim, simulate
from bench.fleet_synth import DAY, Synthetic
from runtime.placement.profiles import LoadPoint, Profile
from runtime.spec.model import ModelSpec, RuntimeName


def tier(keep_alive: float, *, cold: float = 20.0, min_warm: int = 0) -> TierSim:
    # sigma 0: every request takes exactly p50 (10 s)
    return TierSim(
        gpu=True,
        p50=10.0,
        sigma=0.0,
        cold=cold,
        min_warm=min_warm,
        max_replicas=4,
        mem_share=1.0,
        cores=1.0,
        keep_alive=keep_alive,
    )


def held_seconds(times: list[float], t: TierSim) -> float:
    intervals: list[tuple[float, float, TierSim]] = []
    n, ok = simulate(np.array(times), [(t, None)] * 24, 60_000, np.random.default_rng(0), intervals)
    assert (n, ok) == (len(times), len(times))
    return memory_gpu_hours(intervals) * 3600


@pytest.mark.parametrize(
    ("keep_alive", "expected"),
    [
        # one request at 100 s: 20 s cold start, 10 s served, then the keep-alive
        (6.0, 20 + 10 + 6),
        (90.0, 20 + 10 + 90),
    ],
)
def test_a_replica_goes_after_its_keep_alive_not_at_midnight(
    keep_alive: float, expected: float
) -> None:
    assert held_seconds([100.0], tier(keep_alive)) == pytest.approx(expected)


def test_a_warm_minimum_is_held_to_the_end_of_the_day() -> None:
    assert held_seconds([100.0], tier(6.0, min_warm=1)) == pytest.approx(DAY)


def test_requests_within_the_keep_alive_share_one_replica() -> None:
    # 100 -> ready at 120, done 130; 133 arrives 3 s later: served at once, done 143.
    assert held_seconds([100.0, 133.0], tier(6.0)) == pytest.approx(20 + 10 + 3 + 10 + 6)


def profile(device: str, p50_ms: float, cold_s: float) -> Profile:
    return Profile(
        model="m",
        runtime=RuntimeName.LLAMA,
        device=device,
        artifact_hash="x",
        cold_start={"spawn": 0.0, "load": cold_s, "warmup": 0.0},
        points=(
            LoadPoint(
                concurrency=1,
                requests=8,
                p50_ms=p50_ms,
                p95_ms=p50_ms,
                throughput_rps=1000 / p50_ms,
            ),
        ),
        memory_mib=1000,
        rss_mib=1000,
        gpu_memory_mib=1000 if device == "cuda" else None,
    )


def model(goal_ms: float, *, cpu_p50_ms: float, gpu_cold_s: float) -> Synthetic:
    spec = ModelSpec.model_validate(
        {
            "name": "m",
            "task": "chat",
            "artifacts": {"gguf": "m.gguf"},
            "runtimes": ["llama"],
            "latency": {"p95_ms": goal_ms},
        }
    )
    cpu = profile("cpu", cpu_p50_ms, 1.0)
    gpu = profile("cuda", 10_000, gpu_cold_s)
    return Synthetic(spec, "chat", 1.0, 0.01, 0.0, cpu, gpu)


TIMES = np.array([0.0, 100.0, 1000.0])


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        # a CPU tier meets 60 s: no GPU needed at all
        (model(60_000, cpu_p50_ms=5_000, gpu_cold_s=20), 0.0),
        # GPU only, starts in time (20 + 10 <= 60 s): one load, 3 x 10 s served, and over
        # the idle gaps (90 s, 890 s) the smaller of each gap and a 20 s load
        (model(60_000, cpu_p50_ms=90_000, gpu_cold_s=20), 20 + 30 + 20 + 20),
        # GPU only, its cold start breaks the goal (55 + 10 > 60 s): held all day
        (model(60_000, cpu_p50_ms=90_000, gpu_cold_s=55), DAY),
    ],
    ids=["cpu serves it", "gpu from zero", "gpu kept warm"],
)
def test_model_floor_seconds(m: Synthetic, expected: float) -> None:
    assert model_floor_seconds(m, TIMES) == pytest.approx(expected)


def test_a_short_gap_counts_the_gap_not_a_load() -> None:
    m = model(60_000, cpu_p50_ms=90_000, gpu_cold_s=20)
    # 0 -> served to 10; 15 arrives 5 s later (kept up: 5 s, less than a load)
    assert model_floor_seconds(m, np.array([0.0, 15.0])) == pytest.approx(20 + 20 + 5)
