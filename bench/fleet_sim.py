"""Fleet simulation: 200 models for a day on a few GPUs and CPU nodes, three policies.

A discrete-event simulation, per model, of requests arriving (a daily cycle, a phase
per model, plus bursts), replicas that start cold, serve one request at a time, scale
up when a request would wait and back to zero after ``KEEPALIVE`` idle seconds (above
their warm minimum). Policies:

- ``always_gpu``: every model on a GPU, one replica always warm (KServe/Kaito style).
- ``static_format``: by artifact format: GGUF on a GPU, ONNX on a CPU; scale to zero.
- ``manager``: ``runtime.placement.policy.choose_runtime`` every hour on the load seen in the
  hour before (the first hour: the expected load), with its bridge / warm minimum for
  cold starts; a move starts the new tier before the old one goes. Every model has a
  WASM form beside its native one (issue 14): a tier in the shared WASM host starts an
  instance in ``wasm_instance_start_ms`` and holds no cores between requests.
- ``manager_native_only``: the same policy with the WASM forms taken away (the fleet
  as it was before issue 14), for comparison.

Profiles: the bundled models' CPU profiles measured by ``edgeinfer profile`` on this
host (``smollm2`` for chat, ``gemma3-270m`` for completion, ``minilm`` for
embeddings, ``magika`` for classification), native and WASM (``wasm-cpu``: the wasi-nn
GGML guest, our engine), scaled to each synthetic model's size:
latency, cold-start load/warm-up and memory linear in parameters (a replica computes
on the same cores as this host's). GPU profiles are not measured (no GPU here): they
are ``runtime.placement.profiles.estimate_cuda`` of the scaled CPU profile, with the factors
``edgeinfer plan`` uses. Latency goals are multiples of the base model's measured p50,
so the mix of CPU-able and GPU-only models does not depend on how busy the measuring
host was (a profile's p95 comes from few requests, and one stall moves it).

GPU-hours, three accountings, all reported: ``gpu_hours`` is what each policy holds as
deployed (the baselines: one whole GPU per replica, ``nvidia.com/gpu: 1``; the manager:
replicas packed by memory, GPUs in use = ceil(memory held / GPU memory) at every
moment); ``gpu_hours_packed`` packs every policy's GPU replicas that same way;
``gpu_memory_hours`` is GPU memory held in whole-GPU hours, with no rounding up (the
like-for-like figure that neither sharing nor GPU size flatters).

Capacity is not enforced: ``gpus_peak`` says how many GPUs each policy would need at
its busiest moment (packed) and ``fits_gpus`` whether that is within the fleet's
``GPUS``; CPU replicas are bounded per model (``max-scale``) only.

``gpu_memory_hours_floor`` is a lower bound for every policy that keeps requests within
their goals (``gpu_memory_floor``): the GPU memory of the models that only a GPU serves
in time and whose GPU cold start breaks the goal, held all day. Against always-on GPU,
``best_possible_gpu_memory_hours_saved`` is the most any such policy can save like for
like with this fleet.

The WASM forms of the GGUF families run the native llama.cpp inside the wasi-nn
GGML guest. On a machine shared with other work the two tiers' profiles scatter by
far more than that difference (one run here: llama-cpu p50 4.8 s and wasm-cpu 0.8 s
for the same 32 tokens), so by default (``--ggml-wasm derived``) their WASM profile is
the native one slowed by ``GGML_WASM_SPEED`` (bench/wasi_nn_overhead.py, quiet
machine: 0.959 of native tokens/s) with the measured WASM profile's memory; the
engine families (MiniLM, Magika) use their measured WASM profiles.
``--ggml-wasm measured`` uses the measured ones as they are.

Prints one JSON line. Run: ``python bench/fleet_sim.py [--models 200] [--seed 1]``
(reads profiles from ``$EDGEINFER_HOME``; run ``edgeinfer profile`` first).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.placement.inventory import CpuInfo, GpuInfo, Inventory  # noqa: E402
from runtime.placement.policy import PolicyConfig, choose_runtime  # noqa: E402
from runtime.placement.profiles import LoadPoint, Profile, ProfileStore, estimate_cuda  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.model import ModelSpec, RuntimeName, load_config  # noqa: E402
from runtime.spec.placement import Device  # noqa: E402

DAY = 86400.0
KEEPALIVE = 90.0  # Knative: stable window 60 s + scale-to-zero grace 30 s
GPU_MIB = 81920.0
GPUS = 8
CPU_NODE = CpuInfo(model="simulated", cores=32)
FAMILIES = {
    # task: (bundled base, its parameters, smallest, largest, req/s range, goal multiples)
    "chat": ("smollm2", 135e6, 135e6, 8e9, (1e-4, 0.05), (3.0, 6.0, 12.0)),
    "completion": ("gemma3-270m", 270e6, 270e6, 8e9, (1e-4, 0.05), (3.0, 6.0, 12.0)),
    "embedding": ("minilm", 22e6, 22e6, 335e6, (1e-3, 1.0), (3.0, 6.0, 12.0)),
    "classify": ("magika", 1e6, 1e6, 30e6, (1e-3, 1.0), (3.0, 6.0, 12.0)),
}
FORMAT = {"chat": "gguf", "completion": "gguf", "embedding": "onnx", "classify": "onnx"}
GGML_WASM_SPEED = 0.959  # wasi-nn GGML guest / native tokens/s, bench/wasi_nn_overhead.py


def ggml_wasm_from_native(native: Profile, wasm: Profile) -> Profile:
    """The wasi-nn GGML form's profile: native latency / GGML_WASM_SPEED, the measured
    WASM profile's memory and cold start."""
    slow = 1 / GGML_WASM_SPEED
    points = tuple(
        p.model_copy(
            update={
                "p50_ms": p.p50_ms * slow,
                "p95_ms": p.p95_ms * slow,
                "throughput_rps": p.throughput_rps / slow,
                "tokens_per_s": None if p.tokens_per_s is None else p.tokens_per_s / slow,
            }
        )
        for p in native.points
    )
    return wasm.model_copy(update={"points": points, "note": "derived from the native profile"})


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

    def service(self, rng: np.random.Generator) -> float:
        return self.p50 * math.exp(self.sigma * rng.standard_normal())


@dataclass
class Synthetic:
    spec: ModelSpec
    family: str
    scale: float
    rate: float
    phase: float
    cpu: Profile
    gpu: Profile
    wasm: Profile | None = None


def scaled(base: Profile, name: str, s: float) -> Profile:
    pts = tuple(
        LoadPoint(
            concurrency=p.concurrency,
            requests=p.requests,
            p50_ms=p.p50_ms * s,
            p95_ms=p.p95_ms * s,
            throughput_rps=p.throughput_rps / s,
            tokens_per_s=None if p.tokens_per_s is None else p.tokens_per_s / s,
        )
        for p in base.points
    )
    cold = {k: (v if k == "spawn" else v * s) for k, v in base.cold_start.items()}
    return base.model_copy(
        update={
            "model": name,
            "points": pts,
            "cold_start": cold,
            "memory_mib": base.memory_mib * s,
            "rss_mib": base.rss_mib * s,
        }
    )


def make_fleet(
    n: int,
    bases: dict[str, Profile],
    cfg: PolicyConfig,
    rng: np.random.Generator,
    wasm_bases: dict[str, Profile] | None = None,
) -> list[Synthetic]:
    fleet = []
    families = list(FAMILIES)
    for i in range(n):
        family = families[i % len(families)]
        base_name, base_params, lo, hi, (rlo, rhi), goals = FAMILIES[family]
        params = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        s = params / base_params
        base = bases[base_name]
        goal = base.points[0].p50_ms * float(rng.choice(goals))
        fmt = FORMAT[family]
        runtime = "llama" if fmt == "gguf" else "onnx"
        wasm_base = (wasm_bases or {}).get(base_name)
        raw = {
            "name": f"m{i:03d}",
            "task": family,
            "artifacts": {fmt: f"m{i:03d}.{fmt}", **({"wasm": "pkg"} if wasm_base else {})},
            "runtimes": [runtime, *(["wasm"] if wasm_base else [])],
            "latency": {"p95_ms": goal},
            "scaling": {"min-scale": 0, "max-scale": 16, "target": 1, "container-concurrency": 1},
            "resources": {"cpu": 2, "memory_mib": max(64, int(base.rss_mib * s))},
        }
        if family == "classify":
            raw["options"] = {"preprocess": "magika"}
        spec = ModelSpec.model_validate(raw)
        cpu = scaled(base, spec.name, s).model_copy(update={"runtime": RuntimeName(runtime)})
        speed = cfg.gpu_speedup_generation if spec.generative else cfg.gpu_speedup_other
        gpu = estimate_cuda(
            cpu,
            speedup=speed,
            init_s=cfg.cuda_init_s,
            gpu_memory_mib=cpu.memory_mib + cfg.cuda_context_mib,
        )
        rate = math.exp(rng.uniform(math.log(rlo), math.log(rhi)))
        wasm = scaled(wasm_base, spec.name, s) if wasm_base else None
        fleet.append(Synthetic(spec, family, s, rate, float(rng.uniform()), cpu, gpu, wasm))
    return fleet


def arrivals(m: Synthetic, rng: np.random.Generator) -> np.ndarray:
    """Daily cycle (x0.2 at night to x1.8 at the model's peak) and 0-4 bursts of 10
    minutes at 8x, by thinning a Poisson process."""
    bursts = rng.uniform(0, DAY, size=rng.poisson(2))
    peak = m.rate * 1.8 * 8
    n = rng.poisson(peak * DAY)
    t = np.sort(rng.uniform(0, DAY, size=n))
    lam = m.rate * (1 + 0.8 * np.sin(2 * np.pi * (t / DAY - m.phase)))
    for b in bursts:
        lam = np.where((t >= b) & (t < b + 600), lam * 8, lam)
    return t[rng.uniform(0, peak, size=n) < lam]


def tier_of(
    p: Profile, *, gpu: bool, min_warm: int, spec: ModelSpec, host_start_s: float | None = None
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
        due = [r for r in pool if r.retire <= now or (r.free <= now and r.last + KEEPALIVE <= now)]
        if not due:
            return
        stay = [r for r in pool if r not in due]
        due.sort(key=lambda r: -r.last)
        while len(stay) < keep and due and due[0].retire > now:
            stay.append(due.pop(0))
        for r in due:
            intervals.append((r.started, min(r.retire, r.last + KEEPALIVE), r.tier))
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
        done = at + best.tier.service(rng)
        best.free = done
        best.last = done
        ok += int((done - t) * 1000 <= goal)
    end = DAY
    for r in reps + bridges:
        intervals.append((r.started, min(r.retire, max(end, r.free)), r.tier))
    return len(times), ok


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


def whole_gpu_hours(intervals: list[tuple[float, float, TierSim]]) -> float:
    return sum(min(e, DAY) - s for s, e, t in intervals if t.gpu and e > s) / 3600


def run(
    fleet: list[Synthetic], traffic: list[np.ndarray], policy: str, cfg: PolicyConfig, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    inv = Inventory(
        cpu=CPU_NODE,
        memory_total_mib=256_000,
        memory_free_mib=250_000,
        gpus=tuple(
            GpuInfo(index=i, memory_total_mib=int(GPU_MIB), memory_free_mib=int(GPU_MIB))
            for i in range(GPUS)
        ),
    )
    intervals: list[tuple[float, float, TierSim]] = []
    total = within = moves = on_wasm = 0
    gap: dict[str, float] = {"floor": 0.0, "gpu_from_zero": 0.0, "load": 0.0, "choice": 0.0}
    worst: list[tuple[float, Synthetic]] = []
    by_family: dict[str, list[int]] = {f: [0, 0] for f in FAMILIES}
    for m, times in zip(fleet, traffic, strict=True):
        spec = m.spec
        profiles = (m.cpu, m.gpu) + ((m.wasm,) if m.wasm is not None else ())
        if policy == "manager_native_only":
            spec = spec.model_copy(update={"runtimes": spec.runtimes[:1]})
            profiles = (m.cpu, m.gpu)
        if policy == "always_gpu":
            hours = [(tier_of(m.gpu, gpu=True, min_warm=1, spec=spec), None)] * 24
        elif policy == "static_format":
            gpu = FORMAT[m.family] == "gguf"
            hours = [(tier_of(m.gpu if gpu else m.cpu, gpu=gpu, min_warm=0, spec=spec), None)] * 24
        else:
            hours = []
            counts = np.histogram(times, bins=24, range=(0, DAY))[0]
            for h in range(24):
                load = m.rate if h == 0 else max(counts[h - 1] / 3600, m.rate * 0.2)
                d = choose_runtime(spec, profiles, inv, cfg, h * 3600.0, load_rps=load)
                tiers = []
                for t in d.placement.tiers:
                    in_host = t.runtime is RuntimeName.WASM and cfg.wasm_in_host
                    p = m.gpu if t.device is Device.CUDA else m.cpu
                    if t.runtime is RuntimeName.WASM and m.wasm is not None:
                        p = m.wasm
                    tiers.append(
                        tier_of(
                            p,
                            gpu=t.device is Device.CUDA,
                            min_warm=t.min_scale or 0,
                            spec=spec,
                            host_start_s=cfg.wasm_instance_start_ms / 1000 if in_host else None,
                        )
                    )
                hours.append((tiers[0], tiers[1] if len(tiers) > 1 else None))
                moves += h > 0 and hours[-1][0] != hours[-2][0]
            on_wasm += any(primary.host for primary, _ in hours)
        before = len(intervals)
        n, ok = simulate(times, hours, spec.latency.p95_ms, rng, intervals)
        held = memory_gpu_hours(intervals[before:])
        if held > 0:
            gap[gap_cause(m, cfg)] += held
            worst.append((held, m))
        total += n
        within += ok
        by_family[m.family][0] += n
        by_family[m.family][1] += ok
    managed = policy.startswith("manager")
    own = packed_gpu_hours(intervals) if managed else whole_gpu_hours(intervals)
    peak = peak_gpus(intervals)
    cpu_core_h = sum((min(e, DAY) - s) * t.cores for s, e, t in intervals if not t.gpu) / 3600
    return {
        "slo_attainment": round(within / max(1, total), 5),
        "gpu_hours": round(own, 1),
        "gpu_hours_packed": round(packed_gpu_hours(intervals), 1),
        "gpu_memory_hours": round(memory_gpu_hours(intervals), 2),
        "cpu_core_hours": round(cpu_core_h, 1),
        "requests": total,
        "slo_by_task": {f: round(ok / max(1, n), 4) for f, (n, ok) in by_family.items()},
        "gpus_peak": peak,
        "fits_gpus": peak <= GPUS,
        **({"models_on_wasm_some_hour": on_wasm} if managed else {}),
        # GPU memory-hours by why the model held a GPU (see gap_cause), and the models
        # that held the most that the floor does not count.
        "gpu_memory_hours_by_cause": {k: round(v, 2) for k, v in gap.items()},
        "most_gpu_memory_hours_outside_floor": [
            f"{m.spec.name} {m.family} {m.scale * FAMILIES[m.family][1] / 1e6:.0f}M params "
            f"{m.rate:.4f} req/s goal {m.spec.latency.p95_ms / 1000:.1f}s: {h:.2f} "
            f"({gap_cause(m, cfg)})"
            for h, m in sorted(worst, key=lambda x: -x[0])
            if gap_cause(m, cfg) != "floor"
        ][:5],
        **({"moves": moves} if managed else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ggml-wasm", choices=["derived", "measured"], default="derived")
    args = ap.parse_args()
    settings = Settings.from_env()
    store = ProfileStore(settings.state_dir / "profiles")
    config = load_config()
    bases: dict[str, Profile] = {}
    wasm_bases: dict[str, Profile] = {}
    for spec in config.models:
        found = [p for p in store.for_model(spec, config.base_dir) if p.device == "cpu"]
        native = [p for p in found if p.runtime is not RuntimeName.WASM]
        if not native:
            sys.exit(f"no native CPU profile of {spec.name}; run `edgeinfer profile` first")
        bases[spec.name] = native[0]
        wasm = [p for p in found if p.runtime is RuntimeName.WASM]
        if not wasm:
            sys.exit(f"no wasm-cpu profile of {spec.name}; run `edgeinfer profile` first")
        wasm_bases[spec.name] = wasm[0]
        if args.ggml_wasm == "derived" and RuntimeName.LLAMA in spec.runtimes:
            wasm_bases[spec.name] = ggml_wasm_from_native(native[0], wasm[0])
    cfg = PolicyConfig()
    rng = np.random.default_rng(args.seed)
    fleet = make_fleet(args.models, bases, cfg, rng, wasm_bases)
    traffic = [arrivals(m, rng) for m in fleet]
    started = time.perf_counter()
    results = {
        p: run(fleet, traffic, p, cfg, args.seed)
        for p in ("always_gpu", "static_format", "manager", "manager_native_only")
    }
    # The manager told not to cover cold starts that break a goal (the rarely used
    # models then scale to zero and their first requests miss): the other side of
    # the trade-off, reported beside the default.
    results["manager_no_cover"] = run(
        fleet,
        traffic,
        "manager_no_cover",
        cfg.model_copy(update={"cover_cold_starts": False}),
        args.seed,
    )
    base = results["always_gpu"]
    floor = gpu_memory_floor(fleet)
    busy_floor = gpu_memory_floor_busy(fleet, traffic)
    mgr = results["manager"]
    bare = results["manager_no_cover"]
    print(
        json.dumps(
            {
                "bench": "fleet_sim",
                "models": args.models,
                "gpus": GPUS,
                "days": 1,
                "profiles": {
                    n: f"{p.key} measured, p50/p95 {p.points[0].p50_ms:.0f}/"
                    f"{p.points[0].p95_ms:.0f} ms"
                    for n, p in bases.items()
                },
                "ggml_wasm": args.ggml_wasm,
                "wasm_profiles": {
                    n: f"{p.key} {p.note or 'measured'}, p50/p95 {p.points[0].p50_ms:.0f}/"
                    f"{p.points[0].p95_ms:.0f} ms"
                    for n, p in wasm_bases.items()
                },
                "policies": results,
                "manager_gpu_hours_saved": round(
                    1 - mgr["gpu_hours"] / max(base["gpu_hours"], 1e-9), 3
                ),
                "manager_gpu_hours_saved_packed": round(
                    1 - mgr["gpu_hours_packed"] / max(base["gpu_hours_packed"], 1e-9), 3
                ),
                "manager_gpu_memory_hours_saved": round(
                    1 - mgr["gpu_memory_hours"] / max(base["gpu_memory_hours"], 1e-9), 3
                ),
                "manager_no_cover_gpu_memory_hours_saved": round(
                    1 - bare["gpu_memory_hours"] / max(base["gpu_memory_hours"], 1e-9), 3
                ),
                # No policy that covers cold starts can hold less GPU memory than this;
                # the most any could save like for like:
                "gpu_memory_hours_floor": round(floor, 2),
                "best_possible_gpu_memory_hours_saved": round(
                    1 - floor / max(base["gpu_memory_hours"], 1e-9), 3
                ),
                # The tighter bound, that also counts the GPU time the GPU-only requests
                # take to serve (gpu_memory_floor_busy), and the share of it reached:
                "gpu_memory_hours_floor_busy": round(busy_floor, 2),
                "best_possible_gpu_memory_hours_saved_busy": round(
                    1 - busy_floor / max(base["gpu_memory_hours"], 1e-9), 3
                ),
                "manager_share_of_best_saving_busy": round(
                    (1 - mgr["gpu_memory_hours"] / max(base["gpu_memory_hours"], 1e-9))
                    / max(1 - busy_floor / max(base["gpu_memory_hours"], 1e-9), 1e-9),
                    3,
                ),
                "manager_native_only_share_of_best_saving_busy": round(
                    (
                        1
                        - results["manager_native_only"]["gpu_memory_hours"]
                        / max(base["gpu_memory_hours"], 1e-9)
                    )
                    / max(1 - busy_floor / max(base["gpu_memory_hours"], 1e-9), 1e-9),
                    3,
                ),
                # Issue 14's target: >= 99 % within goal and >= 90 % of the best saving.
                "manager_share_of_best_saving": round(
                    (1 - mgr["gpu_memory_hours"] / max(base["gpu_memory_hours"], 1e-9))
                    / max(1 - floor / max(base["gpu_memory_hours"], 1e-9), 1e-9),
                    3,
                ),
                "manager_native_only_share_of_best_saving": round(
                    (
                        1
                        - results["manager_native_only"]["gpu_memory_hours"]
                        / max(base["gpu_memory_hours"], 1e-9)
                    )
                    / max(1 - floor / max(base["gpu_memory_hours"], 1e-9), 1e-9),
                    3,
                ),
                # The target (>= 99 % within goal, >= 40 % fewer GPU-hours than
                # always-on GPU), under each accounting: as deployed, and like for like.
                "target_met_as_deployed": bool(
                    mgr["slo_attainment"] >= 0.99 and mgr["gpu_hours"] <= 0.6 * base["gpu_hours"]
                ),
                "target_met_like_for_like": bool(
                    mgr["slo_attainment"] >= 0.99
                    and mgr["gpu_memory_hours"] <= 0.6 * base["gpu_memory_hours"]
                ),
                "sim_seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
