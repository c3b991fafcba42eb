"""The manager's policy as tables of cases: written inventories, written profiles."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runtime.placement.gpu_packing import Resident
from runtime.placement.inventory import CpuInfo, GpuInfo, Inventory, NodeInfo
from runtime.placement.policy import PolicyConfig, choose_runtime, erlang_c_wait_p95, plan
from runtime.placement.profiles import LoadPoint, Profile
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Device, TierRole

CPU_ONLY = Inventory(cpu=CpuInfo(cores=8), memory_total_mib=16384, memory_free_mib=12000)
ONE_GPU = CPU_ONLY.model_copy(
    update={"gpus": (GpuInfo(index=0, name="L4", memory_total_mib=24576, memory_free_mib=24000),)}
)
FULL_GPU = CPU_ONLY.model_copy(
    update={"gpus": (GpuInfo(index=0, name="L4", memory_total_mib=24576, memory_free_mib=200),)}
)
TINY_HOST = Inventory(cpu=CpuInfo(cores=2), memory_total_mib=512, memory_free_mib=256)
CLUSTER = CPU_ONLY.model_copy(
    update={
        "nodes": (
            NodeInfo(name="edge-1", cluster="edge", gpus=0),
            NodeInfo(name="gpu-1", cluster="dc", gpus=2, gpu_memory_mib=81920),
        )
    }
)
SITES = CPU_ONLY.model_copy(
    update={
        "nodes": (
            NodeInfo(name="pi-1", cluster="edge", cpu_cores=8, memory_mib=8192),
            NodeInfo(
                name="gpu-1",
                cluster="dc",
                cpu_cores=32,
                memory_mib=131072,
                gpus=2,
                gpu_memory_mib=81920,
            ),
        )
    }
)
CFG = PolicyConfig()


def chat(**over: Any) -> ModelSpec:
    raw: dict[str, Any] = {
        "name": "chat",
        "task": "chat",
        "artifacts": {"gguf": "m.gguf", "wasm": "m.wasm"},
        "runtimes": ["llama", "wasm"],
        "latency": {"p95_ms": 3000},
        "scaling": {"min-scale": 1, "max-scale": 4, "target": 2},
        "resources": {"gpu_memory_mib": 1000, "cpu": 2},
        "options": {"threads": 2},  # 2 cores a replica here too (runtime.scaling.cores)
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return ModelSpec.model_validate(raw)


def profile(
    runtime: str,
    device: str = "cpu",
    *,
    p50: float,
    p95: float | None = None,
    cold: float = 0.5,
    tps: float | None = 40.0,
    memory: float = 300.0,
) -> Profile:
    p95 = p95 or p50 * 1.2
    return Profile(
        model="chat",
        runtime=RuntimeName(runtime),
        device=device,
        artifact_hash="x",
        cold_start={"spawn": 0.01, "load": cold, "warmup": 0.0},
        points=(
            LoadPoint(
                concurrency=1,
                requests=10,
                p50_ms=p50,
                p95_ms=p95,
                throughput_rps=1000 / p50,
                tokens_per_s=tps,
            ),
        ),
        memory_mib=memory,
        gpu_memory_mib=memory if device == "cuda" else None,
    )


LLAMA_CPU = profile("llama", p50=800, p95=1000)
LLAMA_GPU = profile("llama", "cuda", p50=60, p95=80, cold=4.0, tps=400)
WASM_CPU = profile("wasm", p50=1500, p95=1800, cold=0.005, tps=20)


def by_tier(decision: Any) -> dict[str, Any]:
    return {c.key: c for c in decision.candidates}


CASES = [
    # (id, spec, profiles, inventory, expected primary, expected goal_met, fragments)
    (
        # At 1 req/s the native tier needs a second replica for its queueing tail (both
        # held all the hour, 40 % busy); the WASM host pays only for the compute.
        "cpu-only edge site",
        chat(),
        (LLAMA_CPU, WASM_CPU),
        CPU_ONLY,
        "wasm-cpu",
        True,
        {"llama-cuda": "no GPU in the inventory", "llama-cpu": "costs more"},
    ),
    (
        "a GPU and a tight goal",
        chat(latency={"p95_ms": 300}),
        (LLAMA_CPU, LLAMA_GPU, WASM_CPU),
        ONE_GPU,
        "llama-cuda",
        True,
        {"llama-cpu": "> goal 300 ms", "wasm-cpu": "> goal 300 ms"},
    ),
    (
        "a GPU and a loose goal: the CPU is cheaper",
        chat(),
        (LLAMA_CPU, LLAMA_GPU),
        ONE_GPU,
        "llama-cpu",
        True,
        {"llama-cuda": "costs more"},
    ),
    (
        "a full GPU",
        chat(latency={"p95_ms": 300}),
        (LLAMA_CPU, LLAMA_GPU),
        FULL_GPU,
        "llama-cpu",
        False,
        {"llama-cuda": "GPU full"},
    ),
    (
        "a goal no candidate meets",
        chat(latency={"p95_ms": 10}),
        (LLAMA_CPU, LLAMA_GPU, WASM_CPU),
        ONE_GPU,
        "llama-cuda",
        False,
        {"llama-cuda": "NO candidate meets", "llama-cpu": "> goal 10 ms"},
    ),
    (
        "tokens/s goal",
        chat(latency={"p95_ms": 5000, "min_tokens_per_s": 30}),
        (LLAMA_CPU, WASM_CPU),
        CPU_ONLY,
        "llama-cpu",
        True,
        {"wasm-cpu": "tokens/s < goal 30"},
    ),
    (
        "no GPU profile: estimated from the CPU one",
        chat(latency={"p95_ms": 300}),
        (LLAMA_CPU,),
        ONE_GPU,
        "llama-cuda",
        True,
        {"wasm-cpu": "no profile"},
    ),
    (
        "not enough host memory",
        chat(latency={"p95_ms": 5000}),
        (LLAMA_CPU, WASM_CPU),
        TINY_HOST,
        "llama-cpu",
        False,
        {"llama-cpu": "MiB of memory"},
    ),
    (
        "a cluster's GPU nodes",
        chat(latency={"p95_ms": 300}),
        (LLAMA_CPU, LLAMA_GPU),
        CLUSTER,
        "llama-cuda@dc",
        True,
        {},
    ),
    (
        "cluster nodes: a loose goal stays on the edge site's CPU",
        chat(),
        (LLAMA_CPU, LLAMA_GPU),
        SITES,
        "llama-cpu@edge",
        True,
        {"llama-cuda@dc": "costs more"},
    ),
    (
        "cluster nodes: a tight goal goes to the GPU cluster",
        chat(latency={"p95_ms": 300}),
        (LLAMA_CPU, LLAMA_GPU),
        SITES,
        "llama-cuda@dc",
        True,
        {"llama-cpu@edge": "> goal 300 ms", "llama-cpu@dc": "> goal 300 ms"},
    ),
    (
        "more load than max-scale can carry",
        chat(scaling={"max-scale": 1}),
        (LLAMA_CPU,),
        CPU_ONLY,
        "llama-cpu",
        False,
        {"llama-cpu": "overloaded: needs"},
    ),
]


@pytest.mark.parametrize(
    ("spec", "profiles", "inventory", "primary", "goal_met", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_choose_runtime(
    spec: ModelSpec,
    profiles: tuple[Profile, ...],
    inventory: Inventory,
    primary: str,
    goal_met: bool,
    fragments: dict[str, str],
) -> None:
    load = 3.0 if spec.scaling.max_scale == 1 else None
    d = choose_runtime(spec, profiles, inventory, CFG, 0.0, load_rps=load)
    chosen = d.chosen
    assert chosen is not None and chosen.key == primary, d.as_dict()
    assert d.goal_met is goal_met, d.reason
    assert d.placement.primary.key == primary.split("@")[0]
    cands = by_tier(d)
    for key, fragment in fragments.items():
        assert fragment in cands[key].reason, (key, cands[key].reason)
    # Every candidate not chosen says why.
    assert all(c.reason for c in d.candidates)


def test_goal_not_met_is_reported_not_hidden() -> None:
    d = choose_runtime(chat(latency={"p95_ms": 10}), (LLAMA_CPU,), CPU_ONLY, CFG, 0.0)
    assert not d.goal_met
    assert "NO candidate meets p95 10 ms" in d.reason
    assert d.as_dict()["goal_met"] is False


def test_estimated_profile_is_marked() -> None:
    d = choose_runtime(chat(latency={"p95_ms": 300}), (LLAMA_CPU,), ONE_GPU, CFG, 0.0)
    gpu = by_tier(d)["llama-cuda"]
    assert gpu.source == "estimated"
    assert gpu.predicted_p95_ms is not None and gpu.predicted_p95_ms < LLAMA_CPU.points[0].p95_ms


COLD = [
    # (id, profiles, goal, expected tiers [(key, role, min_scale)])
    (
        "a fast-starting WASM bridge covers the GPU's cold start",
        (LLAMA_GPU, WASM_CPU),
        3000,
        [("llama-cuda", "primary", None), ("wasm-cpu", "bridge", None)],
    ),
    (
        "no fast bridge: a warm CPU bridge is cheaper than a warm GPU",
        (LLAMA_GPU, profile("llama", p50=800, p95=1000, cold=5.0)),
        3000,
        [("llama-cuda", "primary", None), ("llama-cpu", "bridge", 1)],
    ),
    (
        "nothing else meets the goal: one GPU replica kept warm",
        (LLAMA_GPU,),
        3000,
        [("llama-cuda", "primary", 1)],
    ),
    (
        "cold start within the goal: nothing added",
        (LLAMA_GPU,),
        10000,
        [("llama-cuda", "primary", None)],
    ),
]


@pytest.mark.parametrize(
    ("profiles", "goal", "tiers"), [c[1:] for c in COLD], ids=[c[0] for c in COLD]
)
def test_cold_start_cover(
    profiles: tuple[Profile, ...], goal: float, tiers: list[tuple[str, str, int | None]]
) -> None:
    # At 5 req/s the CPU replicas this host holds cannot carry the load: the GPU wins.
    spec = chat(latency={"p95_ms": goal}, scaling={"min-scale": 0})
    d = choose_runtime(spec, profiles, ONE_GPU, CFG, 0.0, load_rps=5.0)
    got = [(t.key, t.role.value, t.min_scale) for t in d.placement.tiers]
    assert got == tiers, d.reason
    if len(tiers) > 1 or tiers[0][2]:
        assert "cold start" in d.reason and "breaks the goal" in d.reason


def test_gpu_eviction_of_least_recently_used_idle_model() -> None:
    gpu = GpuInfo(index=0, memory_total_mib=4096, memory_free_mib=4096)
    inv = CPU_ONLY.model_copy(update={"gpus": (gpu,)})
    resident = (
        Resident("old", 0, 1800, last_used=10.0),
        Resident("recent", 0, 1800, last_used=50.0),
        Resident("busy", 0, 300, last_used=1.0, busy=True),
    )
    spec = chat(latency={"p95_ms": 300})
    d = choose_runtime(
        spec, (LLAMA_CPU, LLAMA_GPU), inv, PolicyConfig(gpu_reserve_mib=0), 0.0, resident=resident
    )
    assert d.chosen is not None and d.chosen.key == "llama-cuda"
    assert d.chosen.evict == ("old",)
    # With every other model busy, nothing can be evicted: the GPU is full.
    busy = tuple(Resident(r.model, 0, r.memory_mib, r.last_used, True) for r in resident)
    d = choose_runtime(
        spec, (LLAMA_CPU, LLAMA_GPU), inv, PolicyConfig(gpu_reserve_mib=0), 0.0, resident=busy
    )
    assert "GPU full" in by_tier(d)["llama-cuda"].reason


def test_plan_never_overcommits_a_gpu() -> None:
    specs = [chat(name=f"m{i}", latency={"p95_ms": 300}) for i in range(30)]
    config = ModelConfig(models=specs)
    gpu_profiles = {
        s.name: (
            LLAMA_CPU.model_copy(update={"model": s.name}),
            LLAMA_GPU.model_copy(update={"model": s.name, "gpu_memory_mib": 2000}),
        )
        for s in specs
    }
    decisions = plan(config, gpu_profiles, ONE_GPU, CFG, 0.0)
    on_gpu = [d for d in decisions if d.placement.primary.device is Device.CUDA]
    used = sum(d.chosen.memory_mib for d in on_gpu if d.chosen)
    assert 0 < len(on_gpu) < len(specs)
    assert used <= 24576 - CFG.gpu_reserve_mib
    rest = [d for d in decisions if d.placement.primary.device is Device.CPU]
    assert all("GPU full" in by_tier(d)["llama-cuda"].reason for d in rest)


def test_unregistered_runtime_without_profile_is_explained() -> None:
    d = choose_runtime(
        chat(),
        (LLAMA_CPU,),
        CPU_ONLY,
        CFG,
        0.0,
        available=frozenset({RuntimeName.LLAMA, RuntimeName.ONNX}),
    )
    assert "not available in this build" in by_tier(d)["wasm-cpu"].reason


def test_wasm_candidates_from_profiles_even_if_not_registered_here() -> None:
    d = choose_runtime(
        chat(latency={"p95_ms": 5000}),
        (WASM_CPU,),
        CPU_ONLY,
        CFG,
        0.0,
        available=frozenset({RuntimeName.LLAMA}),
    )
    assert d.chosen is not None and d.chosen.key == "wasm-cpu" and d.goal_met


def test_no_profile_at_all_falls_back_and_says_so() -> None:
    # As `--device auto` would: the GPU where this build can use one, else the CPU.
    d = choose_runtime(chat(), (), ONE_GPU, CFG, 0.0)
    assert d.placement.primary.key == "llama-cuda"
    assert "edgeinfer profile" in d.reason and not d.goal_met
    d = choose_runtime(chat(), (), ONE_GPU, CFG, 0.0, cuda_runtimes=frozenset())
    assert d.placement.primary.key == "llama-cpu"
    gpu = by_tier(d)["llama-cuda"]  # listed, never considered, with the reason
    assert gpu.verdict == "rejected" and not gpu.fits
    assert gpu.reason == "this host's llama build cannot use its GPU"
    d = choose_runtime(chat(), (), CPU_ONLY, CFG, 0.0)
    assert d.placement.primary.key == "llama-cpu"


@pytest.mark.parametrize(
    ("servers", "offered", "service", "expected"),
    [
        (1, 0.5, 1.0, math.log(0.5 / 0.05) / 0.5),  # M/M/1: P(W>t) = rho e^{-(mu-lambda)t}
        (1, 0.04, 1.0, 0.0),  # rarely waits at all
        (2, 2.0, 1.0, math.inf),  # unstable
        (4, 0.0, 1.0, 0.0),
    ],
)
def test_erlang_c_wait(servers: int, offered: float, service: float, expected: float) -> None:
    assert erlang_c_wait_p95(servers, offered, service) == pytest.approx(expected)


def test_role_of_bridge_tier_is_bridge() -> None:
    spec = chat(latency={"p95_ms": 3000}, scaling={"min-scale": 0})
    d = choose_runtime(
        spec,
        (LLAMA_GPU, WASM_CPU),
        ONE_GPU,
        CFG,
        0.0,
        load_rps=5.0,
    )
    assert d.placement.bridges and d.placement.bridges[0].role is TierRole.BRIDGE
    assert by_tier(d)["wasm-cpu"].verdict == "bridge"


def test_cold_start_cover_can_be_turned_off() -> None:
    spec = chat(latency={"p95_ms": 3000}, scaling={"min-scale": 0})
    cfg = PolicyConfig(cover_cold_starts=False)
    d = choose_runtime(spec, (LLAMA_GPU, WASM_CPU), ONE_GPU, cfg, 0.0, load_rps=5.0)
    assert [t.key for t in d.placement.tiers] == ["llama-cuda"]
    assert d.placement.primary.min_scale is None
    assert "breaks the goal: left to scale to zero" in d.reason
