"""The discrete-event replay of ``bench/fleet_sim.py``: one model's requests served by
the tiers a policy chose hour by hour; replicas start cold, serve one request at a time,
scale up when a request would wait, and go to zero after their keep-alive (above their
warm minimum)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.fleet_synth import DAY, GPU_MIB
from runtime.placement.profiles import Profile
from runtime.spec.model import ModelSpec

KEEPALIVE = 90.0  # Knative: stable window 60 s + scale-to-zero grace 30 s


@dataclass(frozen=True)
class TierSim:
    """One replica set in the simulation."""

    gpu: bool
    p50: float  # seconds
    sigma: float  # lognormal shape: p95 = p50 * exp(1.645 sigma)
    cold: float  # seconds from zero to ready
    min_warm: int
    max_replicas: int
    mem_share: float  # of one GPU
    cores: float  # held while a replica is up (0 for an instance in the WASM host)
    host: bool = False  # an instance in the shared WASM host
    keep_alive: float = KEEPALIVE  # idle seconds after a request before it goes
    name: str = ""  # the tier's key (``llama-cuda``)

    def service(self, rng: np.random.Generator) -> float:
        return self.p50 * math.exp(self.sigma * rng.standard_normal())


def tier_of(
    p: Profile,
    *,
    gpu: bool,
    min_warm: int,
    spec: ModelSpec,
    host_start_s: float | None = None,
    keep_alive: float | None = None,
) -> TierSim:
    """One tier's replicas; ``host_start_s``: an instance in the warm WASM host, which
    starts in that long and holds no cores between requests."""
    first = p.points[0]
    sigma = min(1.0, math.log(max(first.p95_ms, first.p50_ms * 1.0001) / first.p50_ms) / 1.645)
    mem = (p.gpu_memory_mib or p.memory_mib) if gpu else 0.0
    host = host_start_s is not None
    return TierSim(
        gpu=gpu,
        p50=first.p50_ms / 1000,
        sigma=sigma,
        cold=host_start_s if host_start_s is not None else p.cold_start_s,
        min_warm=min_warm,
        max_replicas=spec.scaling.max_scale,
        mem_share=mem / GPU_MIB,
        cores=0.0 if host else 1.0 if gpu else float(spec.resources.cpu or 2),
        host=host,
        keep_alive=KEEPALIVE if keep_alive is None else keep_alive,
        name=p.key,
    )


@dataclass
class Rep:
    tier: TierSim
    started: float
    ready: float
    free: float
    last: float
    retire: float = math.inf


def simulate(
    times: np.ndarray,
    hours: list[tuple[TierSim, TierSim | None]],
    goal: float,
    rng: np.random.Generator,
    intervals: list[tuple[float, float, TierSim]],
) -> tuple[int, int]:
    """Serve one model's requests; returns (requests, within goal). Replica lifetimes
    are appended to ``intervals``."""
    reps: list[Rep] = []
    bridges: list[Rep] = []
    current = hours[0]

    def retire(pool: list[Rep], now: float, keep: int) -> None:
        """Retire replicas idle for KEEPALIVE or told to go, above the warm minimum
        (the most recently used stay)."""
        due = [
            r
            for r in pool
            if r.retire <= now or (r.free <= now and r.last + r.tier.keep_alive <= now)
        ]
        if not due:
            return
        stay = [r for r in pool if r not in due]
        due.sort(key=lambda r: -r.last)
        while len(stay) < keep and due and due[0].retire > now:
            stay.append(due.pop(0))
        for r in due:
            intervals.append((r.started, min(r.retire, r.last + r.tier.keep_alive), r.tier))
        pool[:] = stay

    def warm(pool: list[Rep], tier: TierSim, now: float) -> None:
        while len(pool) < tier.min_warm:
            pool.append(Rep(tier, now, now + tier.cold, now + tier.cold, now + tier.cold))

    def start(pool: list[Rep], tier: TierSim, now: float) -> Rep:
        r = Rep(tier, now, now + tier.cold, now + tier.cold, now + tier.cold)
        pool.append(r)
        return r

    warm(reps, current[0], 0.0)
    if current[1] is not None:
        warm(bridges, current[1], 0.0)
    ok = 0
    hour = 0
    for t in times:
        h = min(int(t // 3600), len(hours) - 1)
        while hour < h:
            hour += 1
            new = hours[hour]
            boundary = hour * 3600.0
            if new[0] != current[0]:
                # A move: as many new replicas as serve now, ready before the old go.
                n = max(len([r for r in reps if r.retire == math.inf]), new[0].min_warm)
                moved = []
                for _ in range(n):
                    moved.append(
                        Rep(
                            new[0],
                            boundary,
                            boundary + new[0].cold,
                            boundary + new[0].cold,
                            boundary + new[0].cold,
                        )
                    )
                for r in reps:
                    r.retire = min(r.retire, boundary + new[0].cold)
                bridges.extend(reps)  # old replicas serve like a bridge until they retire
                reps = moved
            if new[1] != current[1]:
                for r in bridges:
                    if r.tier == current[1]:
                        r.retire = min(r.retire, boundary)
            current = new
            warm(reps, current[0], boundary)
            if current[1] is not None:
                warm(bridges, current[1], boundary)
        primary, bridge = current
        retire(reps, t, primary.min_warm)
        retire(bridges, t, bridge.min_warm if bridge else 0)
        best = min(reps, key=lambda r: max(r.ready, r.free), default=None)
        at = max(best.ready, best.free) if best else math.inf
        if at > t and len(reps) < primary.max_replicas:
            best, at = start(reps, primary, t), t + primary.cold
        if at > t and not any(r.ready <= t for r in reps):
            # Cold start in progress: a bridge (or the old tier during a move) serves
            # if it can answer sooner.
            pool = [r for r in bridges if r.retire > t]
            b = min(pool, key=lambda r: max(r.ready, r.free), default=None)
            if b is None and bridge is not None:
                b = start(bridges, bridge, t)
            if b is not None and max(b.ready, b.free) < at:
                best, at = b, max(b.ready, b.free)
        assert best is not None
        done = max(at, t) + best.tier.service(rng)  # an idle replica starts at arrival
        best.free = done
        best.last = done
        ok += int((done - t) * 1000 <= goal)
    # At the end of the day, replicas idle past their keep-alive (above the warm
    # minimum) went when it ran out, not at midnight; the rest are held to the end.
    primary, bridge = current
    retire(reps, DAY, primary.min_warm)
    retire(bridges, DAY, bridge.min_warm if bridge else 0)
    for r in reps + bridges:
        intervals.append((r.started, min(r.retire, max(DAY, r.free)), r.tier))
    return len(times), ok
