"""The manager's keep-alive choice (runtime/placement/pricing.py ``choose_keep_alive``,
applied in runtime/placement/candidates.py and said in the policy's reason): a rarely
used model whose cold start fits its goal goes to zero soon after each request; a busy
one, one whose cold start needs cover, or one kept warm keeps its rule's idle period."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runtime.placement.inventory import CpuInfo, GpuInfo, Inventory
from runtime.placement.policy import PolicyConfig, choose_runtime
from runtime.placement.pricing import choose_keep_alive, held_fraction
from runtime.placement.profiles import Profile
from runtime.spec.model import ModelSpec
from tests.runtime.placement.measured import one_point_profile

CFG = PolicyConfig()
CPU_BOX = Inventory(cpu=CpuInfo(cores=8), memory_total_mib=16384, memory_free_mib=15000)
GPU_HOST = Inventory(
    cpu=CpuInfo(cores=16),
    memory_total_mib=65536,
    memory_free_mib=60000,
    gpus=(GpuInfo(index=0, name="L4", memory_total_mib=24576, memory_free_mib=24000),),
)


def spec(goal_ms: float = 10000, **scaling: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "chat",
            "task": "chat",
            "artifacts": {"gguf": "m.gguf"},
            "runtimes": ["llama"],
            "latency": {"p95_ms": goal_ms},
            "scaling": {"min-scale": 0, "max-scale": 8, "target": 1, "window": "60s", **scaling},
            "resources": {"cpu": 2},
            "options": {"threads": 2},  # the core budget's width of a replica
        }
    )


def llama_cpu(p50: float, cold: float) -> Profile:
    return one_point_profile("chat", "llama", p50=p50, cold=cold, memory=4000, spawn=0.1, cores=2)


FAST_START = llama_cpu(p50=470, cold=0.6)  # cold start + p95 well within 10 s
SLOW_START = llama_cpu(p50=470, cold=12.0)  # cold start alone breaks 10 s
GPU_ONLY = llama_cpu(p50=20000, cold=3.0)  # CPU misses 10 s; the GPU estimate meets it

CASES = [
    # (id, spec, profile, inventory, config, req/s, chosen tier, keep-alive)
    ("rare, fast start: to zero after 6 s", spec(), FAST_START, CPU_BOX, CFG, 0.01, "llama-cpu", 6),
    ("hot: keeps its window", spec(), FAST_START, CPU_BOX, CFG, 3.0, "llama-cpu", None),
    (
        "rare, GPU only, fast GPU start: the GPU replica goes to zero after 6 s",
        spec(),
        GPU_ONLY,
        GPU_HOST,
        CFG,
        0.02,
        "llama-cuda",
        6,
    ),
    (
        "rare, cold start breaks the goal: covered by a warm replica, no short keep-alive",
        spec(),
        SLOW_START,
        CPU_BOX,
        CFG,
        0.01,
        "llama-cpu",
        None,
    ),
    (
        "kept warm by its rule",
        spec(**{"min-scale": 1}),
        FAST_START,
        CPU_BOX,
        CFG,
        0.01,
        "llama-cpu",
        None,
    ),
    (
        "turned off in the config",
        spec(),
        FAST_START,
        CPU_BOX,
        CFG.model_copy(update={"keep_alive_to_zero": False}),
        0.01,
        "llama-cpu",
        None,
    ),
    (
        "a rule already shorter than the shortest keep-alive",
        spec(window="6s"),
        FAST_START,
        CPU_BOX,
        CFG.model_copy(update={"shortest_keep_alive_s": 30.0}),
        0.01,
        "llama-cpu",
        None,
    ),
]


@pytest.mark.parametrize(
    ("model", "profile", "inventory", "cfg", "load", "tier", "keep"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_keep_alive_choice(
    model: ModelSpec,
    profile: Profile,
    inventory: Inventory,
    cfg: PolicyConfig,
    load: float,
    tier: str,
    keep: float | None,
) -> None:
    d = choose_runtime(model, (profile,), inventory, cfg, 0.0, load_rps=load)
    assert d.goal_met, d.reason
    assert d.chosen is not None and d.chosen.key == tier, d.as_dict()
    assert d.placement.primary.keep_alive_s == keep
    assert d.chosen.keep_alive_s == keep
    assert d.as_dict()["tiers"][0]["keep_alive_s"] == keep
    if keep is not None:
        assert f"to zero {keep:g} s after its last request" in d.reason, d.reason
    else:
        assert "after its last request" not in d.reason, d.reason


def test_a_short_keep_alive_is_priced_cheaper_for_a_rare_model() -> None:
    """The rare model's chosen tier costs what a 6 s keep-alive holds, less than the
    same tier priced with the rule's 60 s."""
    short = choose_runtime(spec(), (FAST_START,), CPU_BOX, CFG, 0.0, load_rps=0.01)
    usual = choose_runtime(
        spec(),
        (FAST_START,),
        CPU_BOX,
        CFG.model_copy(update={"keep_alive_to_zero": False}),
        0.0,
        load_rps=0.01,
    )
    assert short.chosen is not None and usual.chosen is not None
    ratio = (short.chosen.cost_per_hour or 0) / (usual.chosen.cost_per_hour or 1)
    expected = held_fraction(0.01, 6, warm=False, cold_s=0.6) / held_fraction(
        0.01, 60, warm=False, cold_s=0.6
    )
    assert ratio == pytest.approx(expected)
    assert ratio < 0.2


@pytest.mark.parametrize(
    ("rps", "cold", "expected"),
    [
        (0.01, 0.6, 6.0),  # a request every 100 s, a cold start of 0.6 s: go to zero
        (0.01, 5.0, 6.0),  # 5 s of load still beats 60 s held
        (0.5, 5.0, None),  # rps x cold >= 1: every gap shorter than a cold start on average
        (2.0, 0.1, None),  # busy: almost never idle 6 s, too little to gain
        (0.0, 1.0, None),  # no traffic: nothing to decide on
    ],
)
def test_choose_keep_alive(rps: float, cold: float, expected: float | None) -> None:
    assert choose_keep_alive(rps, cold, 60.0, 6.0, 0.2) == expected


def test_held_fraction_counts_the_cold_starts_after_long_gaps() -> None:
    gone = math.exp(-0.01 * 6)
    assert held_fraction(0.01, 6, warm=False, cold_s=2.0) == pytest.approx(
        1 - gone + 0.01 * 2.0 * gone
    )
    assert held_fraction(1.0, 6, warm=False, cold_s=5.0) == 1.0  # capped


class _NoPools:
    """A supervisor with no pools: the manager's decisions are checked, not applied."""

    pools: dict[str, object] = {}


def test_the_manager_shortens_the_keep_alive_when_the_load_falls_without_a_move() -> None:
    """Planned at the default 1 req/s the model keeps its rule's idle period; once no
    request came for a whole re-plan window, the manager decides again at the low load,
    keeps the tier (no move) and takes the short keep-alive."""
    from runtime.placement.manager import Manager
    from runtime.spec.model import ModelConfig

    now = [0.0]
    m = Manager(
        ModelConfig(models=[spec()]),
        _NoPools(),  # type: ignore[arg-type]
        probe=lambda: CPU_BOX,
        profiles={"chat": (FAST_START,)},
        policy=CFG.model_copy(update={"replan_window_s": 30, "replan_cooldown_s": 60}),
        clock=lambda: now[0],
    )
    m.plan()
    assert m.decisions["chat"].placement.primary.keep_alive_s is None
    for t in range(0, 100, 10):
        now[0] = float(t)
        m.step()
    d = m.decisions["chat"]
    assert d.placement.primary.key == "llama-cpu"
    assert d.placement.primary.keep_alive_s == CFG.shortest_keep_alive_s
    assert d.load_rps < 0.01
    assert not any("moved to" in e for e in m.events["chat"])
