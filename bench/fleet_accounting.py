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


def gpu_memory_floor(fleet: list[Synthetic]) -> float:
    """The fewest GPU memory-hours any policy needs to keep every request within its
    goal: a model whose warm p95 on a CPU misses the goal must run on a GPU, and if its
    GPU cold start plus p95 also misses it, a request arriving while it is at zero
    misses too; its arrivals are Poisson at every hour, so it holds a warm GPU replica
    all day."""
    total = sum(
        (m.gpu.gpu_memory_mib or m.gpu.memory_mib) / GPU_MIB * DAY for m in fleet if in_floor(m)
    )
    return total / 3600


def gpu_memory_floor_busy(fleet: list[Synthetic], traffic: list[np.ndarray]) -> float:
    """A tighter lower bound than :func:`gpu_memory_floor`, as valid: a request that only
    a GPU serves within its goal holds that GPU's memory at least while it is served
    (its GPU p50 here), so a model whose CPU and WASM tiers both miss the goal holds,
    over the day, at least its requests' GPU service time; a model of the floor holds at
    least one replica all day, or that service time when it is longer (concurrent
    requests need more than one replica)."""
    total = 0.0
    for m, times in zip(fleet, traffic, strict=True):
        goal = m.spec.latency.p95_ms
        if min(p.points[0].p95_ms for p in (m.cpu, m.wasm) if p is not None) <= goal:
            continue
        busy = len(times) * m.gpu.points[0].p50_ms / 1000
        held = max(DAY, busy) if in_floor(m) else busy
        total += (m.gpu.gpu_memory_mib or m.gpu.memory_mib) / GPU_MIB * held
    return total / 3600


def in_floor(m: Synthetic) -> bool:
    """Whether :func:`gpu_memory_floor` counts the model (GPU-only, cold start too slow)."""
    goal = m.spec.latency.p95_ms
    cpu_p95 = min(p.points[0].p95_ms for p in (m.cpu, m.wasm) if p is not None)
    return cpu_p95 > goal and m.gpu.cold_start_s * 1000 + m.gpu.points[0].p95_ms > goal


def gap_cause(m: Synthetic, cfg: PolicyConfig) -> str:
    """Why a model holds GPU memory: ``floor`` (counted in the floor), ``gpu_from_zero``
    (only a GPU meets its goal, but it starts in time, so the floor counts none), ``load`` (its CPU
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
