"""The re-priced policy (runtime/placement/pricing.py): WASM in the shared host against
native replicas, as tables of cases over written profiles and hardware."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runtime.placement.inventory import CpuInfo, GpuInfo, Inventory
from runtime.placement.policy import PolicyConfig, choose_runtime
from runtime.placement.pricing import held_fraction, idle_seconds, replica_cost_per_s
from runtime.placement.profiles import Profile
from runtime.spec.model import ModelSpec
from runtime.spec.placement import TierRole
from tests.runtime.placement.measured import one_point_profile

EDGE_BOX = Inventory(cpu=CpuInfo(cores=2), memory_total_mib=2048, memory_free_mib=1500)
DC_HOST = Inventory(
    cpu=CpuInfo(cores=16),
    memory_total_mib=65536,
    memory_free_mib=60000,
    gpus=(GpuInfo(index=0, name="L4", memory_total_mib=24576, memory_free_mib=24000),),
)
CFG = PolicyConfig()
PROCESS_WASM = CFG.model_copy(update={"wasm_in_host": False})


def spec(kind: str, **over: Any) -> ModelSpec:
    native = "llama" if kind == "chat" else "onnx"
    fmt = "gguf" if kind == "chat" else "onnx"
    raw: dict[str, Any] = {
        "name": kind,
        "task": kind,
        "artifacts": {fmt: f"m.{fmt}", "wasm": "pkg"},
        "runtimes": [native, "wasm"],
        "latency": {"p95_ms": 10000 if kind == "chat" else 100},
        "scaling": {"min-scale": 0, "max-scale": 4, "target": 1, "window": "60s"},
        "resources": {"cpu": 1},
        "options": {"threads": 1},  # one core a replica, as profiled (runtime.scaling.cores)
    }
    if kind == "classify":
        raw["options"]["preprocess"] = "magika"
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return ModelSpec.model_validate(raw)


def profile(
    runtime: str, *, p50: float, cold: float, memory: float, device: str = "cpu"
) -> Profile:
    return one_point_profile("m", runtime, p50=p50, cold=cold, memory=memory, device=device)


# Shaped like the bundled models' profiles here: SmolLM2 (llama vs the wasi-nn guest,
# both llama.cpp underneath, the guest a little slower) and Magika (onnxruntime vs our
# engine, 5x slower warm, and a worker process's cold start that breaks 100 ms).
CHAT_NATIVE = profile("llama", p50=470, cold=0.6, memory=160)
CHAT_WASM = profile("wasm", p50=520, cold=0.7, memory=160)
CHAT_WASM_SLOW = profile("wasm", p50=1100, cold=0.7, memory=160)  # a guest 2.3x slower warm
CLS_NATIVE = profile("onnx", p50=7, cold=0.35, memory=40)
CLS_WASM = profile("wasm", p50=40, cold=0.5, memory=30)

CASES = [
    # (id, spec, profiles, inventory, config, load req/s, primary, fragments)
    (
        "rarely used chat model at the edge: WASM, nothing held at zero",
        spec("chat"),
        (CHAT_NATIVE, CHAT_WASM),
        EDGE_BOX,
        CFG,
        0.01,
        "wasm-cpu",
        {"llama-cpu": "costs more", "wasm-cpu": "in the WASM host"},
    ),
    (
        "hot chat model: the faster native replicas, busy, cost less than slow WASM compute",
        spec("chat", scaling={"max-scale": 16}),
        (CHAT_NATIVE, CHAT_WASM_SLOW),
        DC_HOST,
        CFG,
        3.0,
        "llama-cpu",
        {"wasm-cpu": "costs more"},
    ),
    (
        "rarely used classifier: native's cold start breaks 100 ms, WASM needs no cover",
        spec("classify"),
        (CLS_NATIVE, CLS_WASM),
        EDGE_BOX,
        CFG,
        0.002,
        "wasm-cpu",
        {"onnx-cpu": "costs more"},
    ),
    (
        "hot classifier: WASM's slower warm compute misses the goal, native stays",
        spec("classify", scaling={"max-scale": 2}),
        (CLS_NATIVE, CLS_WASM),
        EDGE_BOX,
        CFG,
        60.0,
        "onnx-cpu",
        {"wasm-cpu": "overloaded"},
    ),
    (
        "WASM as a worker process (no host): its cold start needs cover too",
        spec("classify"),
        (CLS_NATIVE, CLS_WASM),
        EDGE_BOX,
        PROCESS_WASM,
        0.002,
        "wasm-cpu",
        {"wasm-cpu": "replica is kept warm"},
    ),
]


@pytest.mark.parametrize(
    ("model", "profiles", "inventory", "cfg", "load", "primary", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_wasm_against_native(
    model: ModelSpec,
    profiles: tuple[Profile, ...],
    inventory: Inventory,
    cfg: PolicyConfig,
    load: float,
    primary: str,
    fragments: dict[str, str],
) -> None:
    d = choose_runtime(model, profiles, inventory, cfg, 0.0, load_rps=load)
    assert d.chosen is not None and d.chosen.key == primary, d.as_dict()
    assert d.goal_met, d.reason
    # A model in the WASM host never needs a warm replica for its cold start.
    assert (d.warm_minimum == 0) is (cfg.wasm_in_host or d.chosen.tier.runtime.value != "wasm")
    cands = {c.key: c for c in d.candidates}
    for key, fragment in fragments.items():
        assert fragment in cands[key].reason, (key, cands[key].reason)


def test_native_bridged_by_the_wasm_host_needs_no_warm_replica() -> None:
    """A hot classifier whose native cold start breaks the goal: native wins on warm
    compute, and the WASM host bridges its cold starts from zero (no warm minimum)."""
    model = spec("classify", scaling={"max-scale": 4})
    d = choose_runtime(model, (CLS_NATIVE, CLS_WASM), DC_HOST, CFG, 0.0, load_rps=40.0)
    assert d.placement.primary.key == "onnx-cpu"
    (bridge,) = [t for t in d.placement.tiers if t.role is TierRole.BRIDGE]
    assert bridge.key == "wasm-cpu" and not bridge.min_scale
    assert d.warm_minimum == 0


def test_the_wasm_host_cold_start_is_the_instance_not_the_process() -> None:
    model = spec("classify")
    in_host = choose_runtime(model, (CLS_WASM,), EDGE_BOX, CFG, 0.0, load_rps=0.01)
    process = choose_runtime(model, (CLS_WASM,), EDGE_BOX, PROCESS_WASM, 0.0, load_rps=0.01)
    assert in_host.chosen is not None and in_host.chosen.cold_start_ms == CFG.wasm_instance_start_ms
    assert process.chosen is not None and process.chosen.cold_start_ms == pytest.approx(500)
    # As a process, the cold start breaks 100 ms and one replica is held warm.
    assert in_host.warm_minimum == 0 and process.warm_minimum == 1
    assert (process.chosen.cost_per_hour or 0) > 10 * (in_host.chosen.cost_per_hour or 0)


@pytest.mark.parametrize(
    ("rps", "idle", "warm", "expected"),
    [
        (0.0, 60, False, 0.0),
        (1.0, 60, False, 1 - math.exp(-60)),
        (0.01, 60, False, 1 - math.exp(-0.6)),
        (0.0, 60, True, 1.0),
    ],
)
def test_held_fraction(rps: float, idle: float, warm: bool, expected: float) -> None:
    assert held_fraction(rps, idle, warm=warm) == pytest.approx(expected)


def test_idle_seconds_and_replica_cost() -> None:
    model = spec(
        "chat",
        scaling={
            "window": "60s",
            "scale-down-delay": "10s",
            "scale-to-zero-pod-retention-period": "5s",
        },
    )
    assert idle_seconds(model) == 75
    assert replica_cost_per_s(2.0, 3, 0.5) == pytest.approx(5.0)  # 0.5 + 2 busy replicas
    assert replica_cost_per_s(2.0, 0, 1.0) == 0.0


def test_a_missed_goal_in_the_wasm_host_keeps_no_warm_replica() -> None:
    """No candidate meets the goal and the WASM tier is the fastest: it is placed in
    the host, and its (instance) cold start gets no warm replica to cover it."""
    model = spec("chat", latency={"p95_ms": 400}, scaling={"max-scale": 1})
    slow_native = profile("llama", p50=2000, cold=0.6, memory=160)
    d = choose_runtime(model, (slow_native, CHAT_WASM), EDGE_BOX, CFG, 0.0, load_rps=0.5)
    assert not d.goal_met and d.chosen is not None and d.chosen.key == "wasm-cpu"
    assert d.warm_minimum == 0 and d.placement.primary.min_scale is None
    assert "breaks the goal" not in d.reason
