"""Re-planning decisions as tables of cases (pure: no gateway, no clock)."""

from __future__ import annotations

import math

import pytest

from runtime.placement.manager import Observed, ReplanState, Watch, accept_move, replan_reason
from runtime.placement.policy import PolicyConfig, choose_runtime
from tests.runtime.placement.test_policy import CPU_ONLY, LLAMA_CPU, LLAMA_GPU, ONE_GPU, chat

CFG = PolicyConfig(replan_window_s=30, replan_cooldown_s=60, load_change_factor=2)
SPEC = chat(latency={"p95_ms": 300})
ON_GPU = choose_runtime(SPEC, (LLAMA_CPU, LLAMA_GPU), ONE_GPU, CFG, 0.0)
LOOSE = chat(latency={"p95_ms": 3000})
ON_CPU = choose_runtime(LOOSE, (LLAMA_CPU, LLAMA_GPU), ONE_GPU, CFG, 0.0)
QUIET = Observed()
SLOW = Observed(requests=100, p95_ms=5000, rps=1.0)
BUSY = Observed(requests=300, p95_ms=900, rps=10.0)
QUEUED = Observed(requests=5, p95_ms=None, rps=0.9, queue_depth=6)
IDLE = Observed(requests=1, rps=0.01)
FAILING = Observed(requests=40, errors=30, rps=1.0)


def fresh(spec, inv, load=1.0):  # type: ignore[no-untyped-def]
    return choose_runtime(spec, (LLAMA_CPU, LLAMA_GPU), inv, CFG, 100.0, load_rps=load)


CASES = [
    # (id, spec, current, inventory, seen, state, now, expect reason fragment | None, forced)
    ("all well", SPEC, ON_GPU, ONE_GPU, QUIET, ReplanState(), 100, None, False),
    (
        "GPU gone: at once",
        SPEC,
        ON_GPU,
        CPU_ONLY,
        QUIET,
        ReplanState(last_move=99),
        100,
        "lost its hardware: no GPU in the inventory",
        True,
    ),
    (
        "slow, but not for a window yet",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        SLOW,
        ReplanState(breach_since=80),
        100,
        None,
        False,
    ),
    (
        "slow for a whole window",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        SLOW,
        ReplanState(breach_since=60),
        100,
        "observed p95 5000 ms > goal 3000 ms",
        False,
    ),
    (
        "slow for a window, but moved recently",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        SLOW,
        ReplanState(breach_since=10, last_move=50),
        100,
        None,
        False,
    ),
    (
        "failing for a window",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        FAILING,
        ReplanState(breach_since=60),
        100,
        "half its requests failed",
        False,
    ),
    (
        "load up 10x for a window",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        BUSY,
        ReplanState(load_since=60),
        100,
        "load 10.00 req/s vs 1.00 planned",
        False,
    ),
    (
        "requests kept queued for a window",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        QUEUED,
        ReplanState(load_since=60),
        100,
        "6 queued vs 1.00 planned",
        False,
    ),
    (
        "load fell away for a window",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        IDLE,
        ReplanState(load_since=60),
        100,
        "load 0.01 req/s vs 1.00 planned",
        False,
    ),
    (
        "load fell away, not for a window yet",
        LOOSE,
        ON_CPU,
        ONE_GPU,
        IDLE,
        ReplanState(load_since=90),
        100,
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("spec", "current", "inv", "seen", "state", "now", "fragment", "forced"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_replan_reason(spec, current, inv, seen, state, now, fragment, forced) -> None:  # type: ignore[no-untyped-def]
    r = replan_reason(spec, current, fresh(spec, inv), seen, state, CFG, now)
    if fragment is None:
        assert r.reason is None
    else:
        assert r.reason is not None and fragment in r.reason, r.reason
        assert r.forced is forced


def test_breach_clock_starts_and_resets() -> None:
    r = replan_reason(LOOSE, ON_CPU, fresh(LOOSE, ONE_GPU), SLOW, ReplanState(), CFG, 100)
    assert r.reason is None and r.state.breach_since == 100
    r = replan_reason(LOOSE, ON_CPU, fresh(LOOSE, ONE_GPU), QUIET, r.state, CFG, 110)
    assert r.state.breach_since is None  # one good window ends the breach


def test_slow_cpu_moves_to_gpu_with_the_observed_p95() -> None:
    r = replan_reason(
        LOOSE, ON_CPU, fresh(LOOSE, ONE_GPU), SLOW, ReplanState(breach_since=60), CFG, 100
    )
    new = choose_runtime(
        LOOSE,
        (LLAMA_CPU, LLAMA_GPU),
        ONE_GPU,
        CFG,
        100,
        load_rps=r.load_rps,
        observed_p95=r.observed_p95,
    )
    assert new.placement.primary.key == "llama-cuda"
    assert accept_move(ON_CPU, new, r, CFG)


def test_gpu_loss_moves_to_cpu_even_when_the_goal_is_missed() -> None:
    r = replan_reason(SPEC, ON_GPU, fresh(SPEC, CPU_ONLY), QUIET, ReplanState(), CFG, 100)
    new = fresh(SPEC, CPU_ONLY)
    assert new.placement.primary.key == "llama-cpu" and not new.goal_met
    assert accept_move(ON_GPU, new, r, CFG)


def test_no_move_for_a_small_gain() -> None:
    r = replan_reason(
        LOOSE, ON_CPU, fresh(LOOSE, ONE_GPU), BUSY, ReplanState(load_since=60), CFG, 100
    )
    same = fresh(LOOSE, ONE_GPU, load=1.0)
    assert not accept_move(ON_CPU, same, r, CFG)  # same primary: nothing to do


def test_watch_window() -> None:
    w = Watch(horizon=10)
    for i in range(40):
        w.record(float(i) / 4, 0.1 if i % 10 else 0.5, ok=i != 3)
    s = w.snapshot(10.0, queue_depth=2)
    assert s.requests == 40 and s.errors == 1 and s.queue_depth == 2
    assert s.p95_ms == pytest.approx(500)
    assert s.rps == pytest.approx(4.0)
    assert w.snapshot(100.0).requests == 0
    assert math.isclose(Watch(5).snapshot(0).rps, 0.0)


class _NoPools:
    """A supervisor with no pools: the manager's decisions are checked, not applied."""

    pools: dict[str, object] = {}


def test_manager_evicts_the_idle_model_for_one_that_misses_its_goal() -> None:
    from runtime.placement.inventory import GpuInfo
    from runtime.placement.manager import Manager
    from runtime.spec.model import ModelConfig

    gpu = GpuInfo(index=0, memory_total_mib=3000, memory_free_mib=3000)
    inv = CPU_ONLY.model_copy(update={"gpus": (gpu,)})
    specs = [chat(name=n, latency={"p95_ms": 3000}) for n in ("first", "second")]
    specs[0] = chat(name="first", latency={"p95_ms": 300})
    big = {
        s.name: (
            LLAMA_CPU.model_copy(update={"model": s.name}),
            LLAMA_GPU.model_copy(update={"model": s.name, "gpu_memory_mib": 2000}),
        )
        for s in specs
    }
    now = [0.0]
    cfg = PolicyConfig(gpu_reserve_mib=0, replan_window_s=30, replan_cooldown_s=60)
    m = Manager(
        ModelConfig(models=specs),
        _NoPools(),  # type: ignore[arg-type]
        probe=lambda: inv,
        profiles=big,
        policy=cfg,
        clock=lambda: now[0],
    )
    m.plan()
    # The first plan never evicts: "first" (tight goal) takes the GPU, "second" the CPU.
    assert m.decisions["first"].placement.primary.key == "llama-cuda"
    assert m.decisions["second"].placement.primary.key == "llama-cpu"

    def latency() -> float:  # "second" is far slower than its goal on the CPU
        return 6.0 if m.decisions["second"].placement.primary.key == "llama-cpu" else 0.1

    # "second" misses its goal for a whole window; "first" is idle.
    for t in range(100, 200):
        now[0] = float(t)
        m.observe("second", 200, latency())
        if t % 10 == 0:
            m.step()
    assert m.decisions["second"].placement.primary.key == "llama-cuda"
    assert m.decisions["first"].placement.primary.key == "llama-cpu"
    assert any("evicted from GPU0 for second" in e for e in m.events["first"])
    assert any("observed p95 6000 ms > goal 3000 ms" in e for e in m.events["second"])
    # "first" misses its goal on the CPU now, but "second" is in use: no eviction back.
    for t in range(200, 400):
        now[0] = float(t)
        m.observe("second", 200, latency())
        if t % 10 == 0:
            m.step()
    assert m.decisions["second"].placement.primary.key == "llama-cuda"
    assert m.decisions["first"].placement.primary.key == "llama-cpu"
