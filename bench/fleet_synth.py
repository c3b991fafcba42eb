"""The simulated fleet of ``bench/fleet_sim.py``: its hardware, 200 synthetic models
scaled from the bundled models' measured profiles (GPU profiles estimated from them),
and each model's requests over a day."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.placement.inventory import CpuInfo
from runtime.placement.policy import PolicyConfig
from runtime.placement.profiles import LoadPoint, Profile, estimate_cuda
from runtime.spec.model import ModelSpec, RuntimeName

DAY = 86400.0
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
