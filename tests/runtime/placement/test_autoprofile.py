"""Measuring in the background what this machine has no profile of, and deciding again
on the new profiles (runtime.placement.autoprofile, Manager.profiled)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.placement.autoprofile import measure_missing, unmeasured
from runtime.placement.inventory import probe_local
from runtime.placement.manager import Manager
from runtime.placement.policy import PolicyConfig
from runtime.placement.profiles import ProfileStore
from runtime.settings import Settings
from runtime.spec.model import ModelConfig, RuntimeName, load_config
from tests.runtime.placement.test_policy import LLAMA_CPU, LLAMA_GPU, ONE_GPU, chat


class _NoPools:
    """A supervisor with no pools: the manager's decisions are checked, not applied."""

    pools: dict[str, object] = {}


def _manager(config: ModelConfig, profiles: dict, probe=lambda: ONE_GPU) -> Manager:  # type: ignore[no-untyped-def,type-arg]
    return Manager(
        config,
        _NoPools(),  # type: ignore[arg-type]
        probe=probe,
        profiles=profiles,
        policy=PolicyConfig(gpu_reserve_mib=0),
        clock=lambda: 10.0,
    )


def test_a_model_measured_after_start_is_placed_on_its_profiles() -> None:
    tight = chat(name="tight", latency={"p95_ms": 300})
    loose = chat(name="loose", latency={"p95_ms": 30000})
    m = _manager(ModelConfig(models=[tight, loose]), {})
    m.plan()
    for name in ("tight", "loose"):  # no profile: its first runtime, on the GPU there is
        assert m.decisions[name].placement.primary.key == "llama-cuda"
        assert "no profile" in m.decisions[name].reason

    for name in ("tight", "loose"):
        m.profiled(
            name, tuple(p.model_copy(update={"model": name}) for p in (LLAMA_CPU, LLAMA_GPU))
        )
    # Measured, the loose goal is met on the cheaper CPU: a move at once, no cooldown
    # in the way (the first plan was just made).
    assert m.decisions["loose"].placement.primary.key == "llama-cpu"
    assert m.events["loose"][-1].startswith("measured: placed on llama-cpu")
    # The tight goal needs the GPU: it stays, now on measured grounds.
    assert m.decisions["tight"].placement.primary.key == "llama-cuda"
    assert "no profile" not in m.decisions["tight"].reason
    assert m.events["tight"][-1].startswith("measured: stays on llama-cuda")


def test_profiles_of_an_unknown_or_unplaced_model_change_nothing() -> None:
    m = _manager(ModelConfig(models=[chat(name="only")]), {})
    m.profiled("only", (LLAMA_CPU,))  # before the first plan: nothing to decide again
    assert m.decisions == {}
    m.plan()
    m.profiled("ghost", (LLAMA_CPU,))
    assert set(m.decisions) == {"only"}


@pytest.mark.slow
def test_the_first_start_measures_what_it_lacks_and_the_manager_decides_on_it(
    tmp_path: Path,
) -> None:
    """Real profiling of the bundled Magika (onnxruntime and the WASM engine) in a fresh
    home, as ``edgeinfer serve`` does on a machine's first start; then nothing is left
    to measure."""
    bundled = load_config()
    magika = bundled.get("magika")
    assert magika is not None and RuntimeName.WASM in magika.runtimes
    config = ModelConfig(models=[magika])
    settings = Settings(state_dir=tmp_path, measure_missing=True)
    store = ProfileStore(tmp_path / "profiles")
    assert [s.name for s in unmeasured(config, store)] == ["magika"]

    m = _manager(config, {}, probe=probe_local)
    m.plan()
    assert "no profile" in m.decisions["magika"].reason
    asyncio.run(measure_missing(m, config, store, settings, requests=4))

    measured = {p.runtime for p in store.for_model(magika, config.base_dir)}
    assert measured == set(magika.runtimes)
    assert unmeasured(config, store) == []
    decision = m.decisions["magika"]
    assert "no profile" not in decision.reason
    assert {c.tier.runtime for c in decision.candidates} == set(magika.runtimes)
    assert any(e.startswith("measured: ") for e in m.events["magika"])


@pytest.mark.parametrize(
    ("environ", "measures"),
    [
        ({}, True),
        ({"EDGEINFER_MEASURE_MISSING": "0"}, False),
        ({"EDGEINFER_MEASURE_MISSING": "off"}, False),
        ({"EDGEINFER_MEASURE_MISSING": "1"}, True),
    ],
)
def test_a_process_measures_unless_told_not_to(environ: dict[str, str], measures: bool) -> None:
    assert Settings.from_env(environ).measure_missing is measures
    assert Settings().measure_missing is False  # built directly (tests, libraries): off
