"""The manager's keep-alive on a tier (runtime/scaling/keep_alive.py) as the pool applies
it: the rule's idle period (stable window + grace/retention) shortened to the chosen
seconds; a FAKE launcher and a FAKE clock (tests/runtime/scaling/fakes.py)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.scaling.keep_alive import keep_alive_rule
from runtime.scaling.pool import ModelPool
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import Device, Placement, Tier
from runtime.spec.scaling import ScalingRule
from tests.runtime.scaling.fakes import FakeClock, FakeLauncher, idle_until_zero, settle

FAR = 1e9


def rule(**knobs: str) -> ScalingRule:
    return ScalingRule.model_validate({"window": "60s", **knobs})


@pytest.mark.parametrize(
    ("knobs", "grace", "keep", "window", "new_grace"),
    [
        ({}, 30.0, None, 60.0, 30.0),  # no choice: the rule as it is
        ({}, 30.0, 6.0, 6.0, 0.0),  # 60 s + 30 s -> 6 s
        ({}, 30.0, 20.0, 20.0, 0.0),
        ({"window": "6s"}, 30.0, 10.0, 6.0, 4.0),  # window already short: the grace shrinks
        ({"window": "6s"}, 0.0, 10.0, 6.0, 0.0),  # not shorter than the rule's: unchanged
        ({"scale-to-zero-pod-retention-period": "300s"}, 30.0, 6.0, 6.0, 0.0),
    ],
)
def test_keep_alive_rule(
    knobs: dict[str, str], grace: float, keep: float | None, window: float, new_grace: float
) -> None:
    got, got_grace = keep_alive_rule(rule(**knobs), keep, grace)
    assert (got.window, got_grace) == (window, new_grace)
    if keep is not None and keep < 60:
        assert got.window + got_grace + got.scale_to_zero_pod_retention_period <= keep


def spec() -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "m",
            "task": "embedding",
            "artifacts": {"onnx": "m.onnx"},
            "runtimes": ["onnx"],
            "scaling": {"initial-scale": 0, "window": "60s"},
        }
    )


@pytest.mark.parametrize(("keep", "idle_for"), [(6.0, 6), (None, 90)])
def test_the_pool_goes_to_zero_after_the_tiers_keep_alive(
    keep: float | None, idle_for: int
) -> None:
    """With the manager's 6 s keep-alive on the tier, the replica goes 6 s after its
    request; without it, after the rule's 60 s window and the 30 s grace."""

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        tier = Tier(RuntimeName.ONNX, Device.CPU, keep_alive_s=keep)
        pool = ModelPool(
            spec(),
            launcher=launcher,
            clock=clock,
            max_queue=10,
            scale_to_zero_grace=30.0,
            placement=Placement("m", (tier,)),
        )
        call = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        pool.release(call.result())
        await idle_until_zero(pool, clock, idle_for)
        await pool.close()

    asyncio.run(scenario())
