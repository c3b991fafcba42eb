"""The core budget (runtime/scaling/cores.py) on the supervisor's real pools, with a
FAKE launcher and a FAKE clock (tests/runtime/scaling/fakes.py): no processes; the
invariant is checked against the fake processes alive, not the budget's own sums."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from runtime.errors import ModelNotReady
from runtime.scaling.cores import CoreBudget, replica_threads
from runtime.scaling.health import HealthConfig
from runtime.scaling.replica import Replica, ReplicaState
from runtime.scaling.supervisor import Supervisor
from runtime.spec.model import ModelConfig, ModelSpec, load_config
from tests.runtime.scaling.fakes import FakeClock, FakeLauncher, FakeProcess, settle

FAR = 1e9


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def with_threads(config: ModelConfig, threads: dict[str, int | None]) -> ModelConfig:
    models = [
        m.model_copy(update={"options": m.options.model_copy(update={"threads": threads[m.name]})})
        if m.name in threads
        else m
        for m in config.models
    ]
    return config.model_copy(update={"models": models})


def alive_threads(launcher: FakeLauncher, cores: int) -> int:
    """Threads of the fake worker processes that have not exited, each as the spec it
    was launched with says (the budget may narrow it): what the machine runs."""
    total = 0
    for r, spec in zip(launcher.started, launcher.specs, strict=True):
        process = r.process
        assert isinstance(process, FakeProcess)
        if process.returncode is None and not process.terminated:
            total += replica_threads(spec, cores)
    return total


BUNDLED = load_config()
THREADINGS = {
    "as bundled": {},
    "all single-threaded": {m.name: 1 for m in BUNDLED.models},
    "mixed": {"smollm2": 2, "gemma3-270m": 1, "minilm": 1, "magika": None},
}


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("threading", list(THREADINGS), ids=list(THREADINGS))
def test_no_bundled_configuration_oversubscribes_the_cores(cores: int, threading: str) -> None:
    threads = {k: v for k, v in THREADINGS[threading].items() if v is None or v <= cores}
    config = with_threads(BUNDLED, threads)

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(config, launcher=launcher, clock=clock, tick=3600, cores=cores)
        await sup.start()
        held: list[tuple[str, Replica]] = []
        pending: list[tuple[str, asyncio.Task[Replica]]] = []
        served: set[str] = set()
        readied = 0
        for step in range(60):
            # Every model is asked for, heavily, all the time (the mixed load of issue 15).
            for name, pool in sup.pools.items():
                for _ in range(min(1 + (step % 3) * 4, 20 - len(pool.queue))):
                    pending.append((name, asyncio.ensure_future(pool.acquire(FAR))))
            await settle()
            while readied < len(launcher.started):
                launcher.ready(readied)
                readied += 1
            await settle()
            for name, task in [p for p in pending if p[1].done()]:
                held.append((name, task.result()))
                served.add(name)
            pending = [p for p in pending if not p[1].done()]
            for name, replica in held[: len(held) // 2 + 1]:
                sup.pools[name].release(replica)
            held = held[len(held) // 2 + 1 :]
            clock.now += 1.0
            for pool in sup.pools.values():
                pool.autoscale(clock.now)
            await settle()
            assert alive_threads(launcher, cores) <= cores, step
            assert sup.cores is not None and sup.cores.used() <= cores
        assert served == set(sup.pools), "a model never got cores"
        for name, replica in held:
            sup.pools[name].release(replica)
        for _, task in pending:
            task.cancel()
        await sup.stop()

    run(scenario)


def one_model(threads: int, **scaling: Any) -> ModelConfig:
    spec = ModelSpec.model_validate(
        {
            "name": "m",
            "task": "embedding",
            "artifacts": {"onnx": "m.onnx"},
            "runtimes": ["onnx"],
            "scaling": {"initial-scale": 0, "container-concurrency": 1, **scaling},
            "options": {"threads": threads},
        }
    )
    return ModelConfig(models=[spec])


def test_a_scale_up_that_does_not_fit_starts_what_fits_and_says_why() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(one_model(2), launcher=launcher, clock=clock, tick=3600, cores=5)
        await sup.start()
        pool = sup.pool("m")
        calls = [asyncio.ensure_future(pool.acquire(FAR)) for _ in range(4)]
        await settle()
        assert len(launcher.started) == 2  # 2 x 2 threads of 5 cores; a third does not fit
        assert "2 more replica(s) of 2 threads do not fit (4 of 5 cores in use)" in (
            pool.status().cores
        )
        launcher.ready(0)
        await settle()
        pool.release(calls[0].result())
        for c in calls:
            c.cancel()
        await sup.stop()

    run(scenario)


def test_a_replica_wider_than_the_budget_never_starts() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(one_model(4), launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        call = asyncio.ensure_future(sup.pool("m").acquire(FAR))
        await settle()
        assert launcher.started == []
        assert "can never start; lower options.threads" in sup.pool("m").status().cores
        call.cancel()
        await sup.stop()

    run(scenario)


def two_models() -> ModelConfig:
    a, b = (one_model(2).models[0].model_copy(update={"name": n}) for n in ("a", "b"))
    return ModelConfig(models=[a, b])


def test_a_model_at_zero_gets_the_cores_of_an_idle_one() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(two_models(), launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        first = asyncio.ensure_future(sup.pool("a").acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        sup.pool("a").release(first.result())  # a: one idle replica holding both cores
        second = asyncio.ensure_future(sup.pool("b").acquire(FAR))
        await settle()
        assert launcher.started[0].state is ReplicaState.STOPPED  # drained for b
        sup.pool("b").autoscale(clock.now)  # b retries at its next tick
        await settle()
        assert [r.model for r in launcher.started] == ["a", "b"]
        launcher.ready(1)
        await settle()
        assert second.result() is launcher.started[1]
        # While b holds the cores, a busy a (at zero, waiting) keeps b from scaling out.
        third = asyncio.ensure_future(sup.pool("a").acquire(FAR))
        await settle()
        sup.pool("b").scale_up(1)
        assert "a (at zero, requests waiting) goes first" in sup.pool("b").status().cores
        third.cancel()
        await sup.stop()

    run(scenario)


def test_busy_models_take_turns_when_the_cores_hold_one_of_them() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(two_models(), launcher=launcher, clock=clock, tick=3600, cores=2)
        assert sup.cores is not None
        await sup.start()
        a = asyncio.ensure_future(sup.pool("a").acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        launcher.started[0].started = clock.now  # it became ready now
        b = asyncio.ensure_future(sup.pool("b").acquire(FAR))
        await settle()
        assert launcher.started[0].state is ReplicaState.READY  # busy, within its turn
        clock.now += sup.cores.turn
        sup.pool("b").autoscale(clock.now)
        await settle()
        assert launcher.started[0].state is ReplicaState.DRAINING  # its turn is over
        sup.pool("a").release(a.result())  # the request in flight finishes
        await settle()
        sup.pool("b").autoscale(clock.now)
        await settle()
        assert [r.model for r in launcher.started] == ["a", "b"]
        b.cancel()
        await sup.stop()

    run(scenario)


def test_the_budget_needs_a_core() -> None:
    with pytest.raises(ValueError, match="at least 1 core"):
        CoreBudget(0, clock=FakeClock())


def three_models() -> ModelConfig:
    base = one_model(2, **{"max-scale": 1}).models[0]
    return ModelConfig(models=[base.model_copy(update={"name": n}) for n in ("a", "b", "c")])


def test_a_model_that_came_back_on_free_cores_is_still_drained_for_one_at_zero() -> None:
    """CI's 504 (tests/gateway/test_schemathesis.py, magika at zero for 60 s): a model
    drained for another came back on its own once the cores were free; the budget still
    counted that old drain as cores on their way back and never drained it again."""

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(three_models(), launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        a, b, c = (sup.pool(n) for n in "abc")

        async def serve(pool: Any, index: int) -> None:
            call = asyncio.ensure_future(pool.acquire(FAR))
            await settle()
            pool.autoscale(clock.now)  # its next tick, should the cores have been busy
            await settle()
            assert len(launcher.started) == index + 1, [r.model for r in launcher.started]
            launcher.ready(index)
            await settle()
            pool.release(call.result())  # served; the replica stays, idle

        await serve(a, 0)  # a holds both cores, idle
        await serve(b, 1)  # a is drained for b
        assert launcher.started[0].state is ReplicaState.STOPPED
        b.scale_down(1)  # b goes to zero on its own (its window passed)
        await settle()
        await serve(a, 2)  # a comes back on the free cores
        call = asyncio.ensure_future(c.acquire(FAR))  # c at zero: a is idle, drain it
        await settle()
        assert launcher.started[2].state is ReplicaState.STOPPED
        c.autoscale(clock.now)
        await settle()
        assert [r.model for r in launcher.started] == ["a", "b", "a", "c"]
        launcher.ready(3)
        await settle()
        assert call.result() is launcher.started[3]
        await sup.stop()

    run(scenario)


def test_no_serving_replica_is_drained_for_a_model_in_crash_loop_back_off() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        health = HealthConfig(backoff_initial_seconds=5.0)
        sup = Supervisor(
            two_models(), launcher=launcher, clock=clock, tick=3600, cores=2, health=health
        )
        await sup.start()
        a, b = sup.pool("a"), sup.pool("b")
        first = asyncio.ensure_future(b.acquire(FAR))
        await settle()
        clock.now += 1.0  # the request waits a second (b's window sees traffic)
        launcher.fail_load(0, "bad weights")  # b's start fails: back-off 5 s
        await settle()
        with pytest.raises(ModelNotReady):
            first.result()
        served = asyncio.ensure_future(a.acquire(FAR))  # a is not kept out by b meanwhile
        await settle()
        launcher.ready(1)
        await settle()
        a.release(served.result())  # a: one idle replica holding both cores
        b.autoscale(clock.now)  # b's autoscaler still wants a replica (recent traffic)
        await settle()
        assert launcher.started[1].state is ReplicaState.READY, "drained for a crash loop"
        assert "crash-loop back-off" in b.status().cores
        clock.now += 5.0  # the back-off is over: a request for b may take a's cores
        second = asyncio.ensure_future(b.acquire(FAR))
        await settle()
        assert launcher.started[1].state is ReplicaState.STOPPED
        b.autoscale(clock.now)
        await settle()
        assert [r.model for r in launcher.started] == ["b", "a", "b"]
        second.cancel()
        await sup.stop()

    run(scenario)


def test_a_model_at_zero_with_no_request_waiting_drains_no_one() -> None:
    """Its window still wanting a replica is no reason to take another model's: two
    models with recent traffic drained each other's idle replica every tick."""

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(two_models(), launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        a, b = sup.pool("a"), sup.pool("b")
        first = asyncio.ensure_future(a.acquire(FAR))
        await settle()
        clock.now += 1.0
        launcher.ready(0)
        await settle()
        a.release(first.result())
        second = asyncio.ensure_future(b.acquire(FAR))  # a idle: drained for b
        await settle()
        b.autoscale(clock.now)
        await settle()
        launcher.ready(1)
        await settle()
        b.release(second.result())  # b: one idle replica holding both cores
        for _ in range(3):
            clock.now += 1.0
            a.autoscale(clock.now)  # a's window wants a replica, nobody waits for one
            b.autoscale(clock.now)
            await settle()
            assert a.decision is not None and a.decision.desired == 1
        assert [r.model for r in launcher.started] == ["a", "b"]
        assert launcher.started[1].state is ReplicaState.READY
        await sup.stop()

    run(scenario)


def unthreaded(*names: str) -> ModelConfig:
    """Models that say no options.threads: every core when alone, narrowed when not."""
    base = one_model(1, **{"max-scale": 1}).models[0]
    base = base.model_copy(update={"options": base.options.model_copy(update={"threads": None})})
    return ModelConfig(models=[base.model_copy(update={"name": n}) for n in names])


def test_busy_models_get_narrower_replicas_side_by_side_instead_of_turns() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(unthreaded("a", "b"), launcher=launcher, clock=clock, tick=3600, cores=2)
        assert sup.cores is not None
        await sup.start()
        a, b = sup.pool("a"), sup.pool("b")
        first = asyncio.ensure_future(a.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        assert launcher.specs[0].options.threads is None  # alone: every core
        second = asyncio.ensure_future(a.acquire(FAR))  # a stays busy: one waits
        waiting = asyncio.ensure_future(b.acquire(FAR))  # b waits for a's turn
        await settle()
        assert launcher.started[0].state is ReplicaState.DRAINING  # a has served its turn
        a.release(first.result())
        await settle()
        b.autoscale(clock.now)  # both busy: b gets 1 of the 2 cores...
        a.autoscale(clock.now)  # ...and a, back at zero, the other one beside it
        await settle()
        assert [r.model for r in launcher.started] == ["a", "b", "a"]
        assert [s.options.threads for s in launcher.specs] == [None, 1, 1]
        assert "replicas of 1 of 2 threads" in b.status().cores
        launcher.ready(1)
        launcher.ready(2)
        await settle()
        assert waiting.result() is launcher.started[1]
        assert second.result() is launcher.started[2]
        assert alive_threads(launcher, 2) == sup.cores.used() == 2
        b.release(waiting.result())
        a.release(second.result())
        await sup.stop()

    run(scenario)


def test_the_model_quickest_to_come_back_is_drained_first() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        config = ModelConfig(
            models=[
                m.model_copy(update={"name": n})
                for m, n in zip(three_models().models, ("slow", "quick", "c"), strict=True)
            ]
        )
        config = with_threads(config, {"slow": 1, "quick": 1, "c": 1})
        sup = Supervisor(config, launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        for i, (name, load_s) in enumerate((("slow", 5.0), ("quick", 0.5))):
            call = asyncio.ensure_future(sup.pool(name).acquire(FAR))
            await settle()
            launcher.ready(i, load_s=load_s)
            await settle()
            sup.pool(name).release(call.result())  # idle, holding 1 core each
        waiting = asyncio.ensure_future(sup.pool("c").acquire(FAR))
        await settle()
        assert launcher.started[1].state is ReplicaState.STOPPED  # quick: back in 0.5 s
        assert launcher.started[0].state is ReplicaState.READY  # slow: 5 s to come back
        waiting.cancel()
        await sup.stop()

    run(scenario)
