"""What ``bench/fleet_sim.py`` counts: GPU-hours held (as deployed, packed by memory,
memory alone), the fewest any policy could hold (the floor), and why a model held GPU
memory."""

from __future__ import annotations

import math

import numpy as np

from bench.fleet_replay import TierSim
from bench.fleet_synth import DAY, GPU_MIB, Synthetic
from runtime.placement.policy import PolicyConfig


def packed_gpu_hours(intervals: list[tuple[float, float, TierSim]]) -> float:
    """GPUs in use = ceil(memory held / GPU memory), integrated over the day."""
    events = []
    for s, e, tier in intervals:
        if tier.gpu and e > s:
            events += [(s, tier.mem_share), (min(e, DAY), -tier.mem_share)]
    events.sort()
    total, held, last = 0.0, 0.0, 0.0
    for t, d in events:
        total += math.ceil(held - 1e-9) * (t - last) if held > 1e-9 else 0.0
        held += d
        last = t
    return total / 3600


def memory_gpu_hours(intervals: list[tuple[float, float, TierSim]]) -> float:
    """GPU memory held, in whole-GPU hours (perfect packing, no rounding up)."""
    return sum((min(e, DAY) - s) * t.mem_share for s, e, t in intervals if t.gpu and e > s) / 3600


def peak_gpus(intervals: list[tuple[float, float, TierSim]]) -> int:
    """The most GPUs in use at once when replicas are packed by memory."""
    events = sorted(
        ev
        for s, e, t in intervals
        if t.gpu and e > s
        for ev in ((s, t.mem_share), (min(e, DAY), -t.mem_share))
    )
    held = peak = 0.0
    for _, d in events:
        held += d
        peak = max(peak, held)
    return math.ceil(peak - 1e-9)


def whole_gpu_hours(intervals: list[tuple[float, float, TierSim]]) -> float:
    return sum(min(e, DAY) - s for s, e, t in intervals if t.gpu and e > s) / 3600


def gpu_memory_floor_loose(fleet: list[Synthetic]) -> float:
    """The floor as this bench counted it before issue 14's keep-alive work: only the
    models of :func:`in_floor`, one warm GPU replica all day. A lower bound, but a loose
    one: it counts no GPU memory at all for a model that only a GPU serves in time but
    whose GPU cold start fits its goal, though every one of its requests holds a GPU
    while it is served and while its replica loads. Reported beside the floor."""
    total = sum(gpu_share(m) * DAY for m in fleet if in_floor(m))
    return total / 3600


def gpu_memory_floor(fleet: list[Synthetic], traffic: list[np.ndarray]) -> float:
    """The fewest GPU memory-hours any policy needs to keep every request within its
    goal, counted model by model for those whose CPU and WASM tiers both miss the goal
    (:func:`model_floor_seconds`); a model a CPU tier serves in time needs none."""
    pairs = zip(fleet, traffic, strict=True)
    return sum(gpu_share(m) * model_floor_seconds(m, t) for m, t in pairs) / 3600


def model_floor_seconds(m: Synthetic, times: np.ndarray) -> float:
    """The fewest seconds of one GPU replica's memory (replica-seconds) ``m`` must hold
    for ``times`` when only a GPU serves it in time (0 otherwise):

    - every request holds a replica while it is served (its GPU p50 here), one replica
      per request in service at once;
    - if its GPU cold start plus p95 breaks the goal (:func:`in_floor`), a request that
      finds it at zero misses; arrivals are Poisson at every hour, so one replica is
      held all day (or the service time, when longer);
    - else the replica loads once (a cold start, memory held while it loads), and
      between two requests, over each idle gap in the union of service intervals, holds
      the smaller of the gap (kept up) and one cold start (gone to zero, loaded again):
      the best any policy can do, even one that knew every arrival in advance.
    """
    goal = m.spec.latency.p95_ms
    if min(p.points[0].p95_ms for p in (m.cpu, m.wasm) if p is not None) <= goal:
        return 0.0
    service = m.gpu.points[0].p50_ms / 1000
    busy = len(times) * service
    if in_floor(m):
        return max(DAY, busy)
    if len(times) == 0:
        return 0.0
    cold = m.gpu.cold_start_s
    ends = np.maximum.accumulate(times + service)
    gaps = np.clip(times[1:] - ends[:-1], 0.0, None)
    return cold + busy + float(np.minimum(gaps, cold).sum())


def gpu_share(m: Synthetic) -> float:
    return (m.gpu.gpu_memory_mib or m.gpu.memory_mib) / GPU_MIB


def in_floor(m: Synthetic) -> bool:
    """Whether the model is GPU-only and its GPU cold start breaks the goal (held all
    day by the floor)."""
    goal = m.spec.latency.p95_ms
    cpu_p95 = min(p.points[0].p95_ms for p in (m.cpu, m.wasm) if p is not None)
    return cpu_p95 > goal and m.gpu.cold_start_s * 1000 + m.gpu.points[0].p95_ms > goal


def gap_cause(m: Synthetic, cfg: PolicyConfig) -> str:
    """Why a model holds GPU memory: ``floor`` (GPU-only, its cold start too slow: held
    all day), ``gpu_from_zero`` (only a GPU meets its goal, but it starts in time: the
    floor counts its service and the loads no policy avoids), ``load`` (its CPU
    and WASM tiers, even at max-scale, cannot carry its peak hourly load: the daily peak
    is 1.8x its mean rate, bursts 8x), or ``choice`` (a CPU tier could have: the
    policy's pricing or its cold-start cover chose the GPU)."""
    if in_floor(m):
        return "floor"
    if min(p.points[0].p95_ms for p in (m.cpu, m.wasm) if p is not None) > m.spec.latency.p95_ms:
        return "gpu_from_zero"
    best = min(p.service_ms for p in (m.cpu, m.wasm) if p is not None) / 1000
    peak = m.rate * 1.8
    if peak * best > m.spec.scaling.max_scale * cfg.max_utilization:
        return "load"
    return "choice"


def warm_p95_meets_goal(m: Synthetic) -> bool:
    """Whether some tier of the model (CPU, WASM or GPU) has a warm p95, alone, within
    its goal; the fleet draws goals from the base model's latency, so a large model's
    may be beyond any hardware, and no policy can meet it."""
    tiers = (m.cpu, m.wasm, m.gpu)
    return min(p.points[0].p95_ms for p in tiers if p is not None) <= m.spec.latency.p95_ms
