"""ModelPool on a FAKE launcher and a FAKE clock (tests/runtime/scaling/fakes.py): no
worker processes, no sockets, no time passing; replicas become ready when the test
says. Each scenario runs in its own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from runtime.errors import DeadlineExceeded, EdgeInferError, ModelNotReady, Overloaded
from runtime.scaling.pool import ModelPool
from runtime.scaling.replica import Replica, ReplicaState
from runtime.scaling.supervisor import Supervisor
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Device, Placement, Tier, TierRole
from tests.runtime.scaling.fakes import (
    FakeClock,
    FakeLauncher,
    FakeProcess,
    idle_until_zero,
    settle,
)

CPU = Tier(RuntimeName.ONNX, Device.CPU)
WASM = Tier(RuntimeName.WASM, Device.CPU)
GPU = Tier(RuntimeName.ONNX, Device.CUDA)
CPU_BRIDGE = Tier(RuntimeName.ONNX, Device.CPU, role=TierRole.BRIDGE)
FAR = 1e9  # a deadline no scenario reaches


def spec(**scaling: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "m",
            "task": "embedding",
            "artifacts": {"onnx": "m.onnx", "wasm": "m.wasm"},
            "runtimes": ["onnx", "wasm"],
            "scaling": {"initial-scale": 0, **scaling},
        }
    )


def make(clock: FakeClock, launcher: FakeLauncher, *, max_queue: int = 100, **kw: Any) -> ModelPool:
    scaling = kw.pop("scaling", {})
    return ModelPool(spec(**scaling), launcher=launcher, clock=clock, max_queue=max_queue, **kw)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def waiters(pool: ModelPool, n: int) -> list[asyncio.Task[Replica]]:
    return [asyncio.ensure_future(pool.acquire(FAR)) for _ in range(n)]


# -- scale from zero on a queued request ------------------------------------------------

# (container-concurrency, max-scale, requests) -> replicas started
FROM_ZERO = [
    (1, 0, 1, 1),
    (1, 0, 3, 3),
    (2, 0, 3, 2),
    (1, 2, 5, 2),
    (0, 0, 7, 1),  # unlimited concurrency: one replica takes them all
]


@pytest.mark.parametrize(("cc", "max_scale", "requests", "started"), FROM_ZERO)
def test_queued_requests_scale_from_zero(
    cc: int, max_scale: int, requests: int, started: int
) -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(
            clock,
            launcher,
            scaling={"container-concurrency": cc, "max-scale": max_scale, "target": max(cc, 1)},
        )
        assert pool.try_acquire() is None
        calls = waiters(pool, requests)
        await settle()
        assert len(launcher.started) == started
        assert pool.status().queued == requests
        assert pool.status().starting == started
        for i in range(started):
            launcher.ready(i)
        await settle()
        served = [t for t in calls if t.done()]
        limit = cc or requests
        assert len(served) == min(requests, started * limit)
        for replica in launcher.started:
            assert replica.state is ReplicaState.READY
            assert replica.in_flight <= limit
        assert pool.status().cold_starts == started
        # Each release hands the freed slot to the next in the queue, in order.
        released: set[int] = set()
        while len(released) < requests:
            done = [i for i, t in enumerate(calls) if t.done() and i not in released]
            assert done, "a queued request was never handed a slot"
            for i in done:
                pool.release(calls[i].result())
                released.add(i)
            await settle()
        assert pool.status().in_flight == 0
        assert pool.status().queued == 0
        await pool.close()

    run(scenario)


# -- the queue bound --------------------------------------------------------------------


@pytest.mark.parametrize("max_queue", [0, 1, 3])
def test_a_full_queue_answers_503_and_the_queued_are_served(max_queue: int) -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher, max_queue=max_queue)
        queued = waiters(pool, max_queue)
        await settle()
        with pytest.raises(Overloaded) as caught:  # (a deadline due now: never a hang)
            await pool.acquire(clock.now)
        assert caught.value.status == 503
        assert caught.value.retry_after == 1.0
        assert f"{max_queue} requests waiting" in caught.value.message
        assert pool.status().queued == max_queue
        if max_queue:
            launcher.ready(0)
            await settle()
            assert queued[0].done()
            pool.release(queued[0].result())
        await pool.close()

    run(scenario)


def test_the_deadline_passes_in_the_queue_with_504() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        with pytest.raises(DeadlineExceeded) as caught:
            await pool.acquire(clock.now)  # already due: no wait at all
        assert caught.value.status == 504
        assert pool.status().queued == 0
        await pool.close()

    run(scenario)


# -- draining on a tier move ------------------------------------------------------------


def test_a_move_keeps_the_old_tier_serving_then_drains_it() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher, placement=Placement("m", (CPU,)))
        first = waiters(pool, 1)
        await settle()
        assert launcher.started[0].tier == CPU
        launcher.ready(0)
        await settle()
        old = first[0].result()  # a request in flight on the old tier

        pool.set_placement(Placement("m", (WASM,)))
        await settle()
        assert [r.tier for r in launcher.started] == [CPU, WASM]
        assert pool.status().moves == 1
        # The new tier is starting: the old one still takes requests.
        again = pool.try_acquire()
        assert again is old
        pool.release(again)

        launcher.ready(1)
        await settle()
        assert old.state is ReplicaState.DRAINING  # no new requests...
        assert not old.process.terminated  # type: ignore[attr-defined]
        nxt = pool.try_acquire()
        assert nxt is launcher.started[1]  # ...they go to the new tier
        pool.release(nxt)
        pool.release(old)  # ...and the one in flight finishes
        await settle()
        assert old.process.terminated  # type: ignore[attr-defined]
        assert old not in pool.replicas
        await pool.close()

    run(scenario)


def test_a_bridge_serves_the_cold_start_and_drains_when_the_primary_is_ready() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher, placement=Placement("m", (GPU, CPU_BRIDGE)))
        calls = waiters(pool, 1)
        await settle()
        assert [r.tier for r in launcher.started] == [GPU, CPU_BRIDGE]
        launcher.ready(1)  # the bridge is up first
        await settle()
        bridge = calls[0].result()
        assert bridge.tier == CPU_BRIDGE
        pool.release(bridge)
        assert pool.status().bridge_served == 1
        launcher.ready(0)
        await settle()
        assert bridge not in pool.replicas
        assert pool.try_acquire() is launcher.started[0]
        await pool.close()

    run(scenario)


# -- scale to zero after the grace ------------------------------------------------------


@pytest.mark.parametrize(
    ("grace", "retention", "idle_for"),
    [(0, 0, 6), (30, 0, 36), (10, 20, 26)],  # window 6 s + the longer of the two
)
def test_scale_to_zero_after_the_window_and_grace(
    grace: float, retention: int, idle_for: float
) -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(
            clock,
            launcher,
            scale_to_zero_grace=grace,
            scaling={"window": "6s", "scale-to-zero-pod-retention-period": f"{retention}s"},
        )
        calls = waiters(pool, 1)
        await settle()
        launcher.ready(0)
        await settle()
        replica = calls[0].result()
        pool.release(replica)
        await idle_until_zero(pool, clock, idle_for)
        assert replica.process.terminated  # type: ignore[attr-defined]
        assert "scaled to zero" in pool.status().reason
        await pool.close()

    run(scenario)


def test_a_hold_keeps_one_replica_past_the_idle_window_then_lets_it_go() -> None:
    """Ollama's keep_alive: with a hold until +60 s the idle pool keeps its replica past
    the 6 s window; once the hold is over, the rule scales it to zero."""

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher, scale_to_zero_grace=0, scaling={"window": "6s"})
        calls = waiters(pool, 1)
        await settle()
        launcher.ready(0)
        await settle()
        pool.release(calls[0].result())
        last = clock.now
        pool.hold(last + 60)
        for t in range(1, 60, 5):
            clock.now = last + t
            pool.autoscale(clock.now)
            await settle()
            assert pool.status().ready == 1, f"scaled to zero {t} s into a 60 s hold"
        for t in range(60, 80):
            clock.now = last + t
            pool.autoscale(clock.now)
            await settle()
        assert pool.status().ready == 0
        await pool.close()

    run(scenario)


# -- a replica that dies before it is ready ---------------------------------------------


def test_a_load_failure_fails_the_queued_with_503_and_the_pool_keeps_serving() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        calls = waiters(pool, 2)
        await settle()
        launcher.fail_load(0, "bad magic number")
        await settle()
        for t in calls:
            error = t.exception()
            assert isinstance(error, ModelNotReady)
            assert error.status == 503
            assert "failed to load: bad magic number" in error.message
        assert launcher.started[0].process.terminated  # type: ignore[attr-defined]
        assert pool.status().queued == 0
        # Inside the crash-loop back-off a request gets 503 naming the cause at once.
        assert pool.status().failed_starts == 1
        assert pool.status().backoff_seconds == 1.0
        with pytest.raises(ModelNotReady, match=r"failed to start 1 time.*bad magic number"):
            await pool.acquire(FAR)
        assert len(launcher.started) == 1
        # The pool keeps serving: after the back-off the next request starts a new replica.
        clock.now += 1.0
        later = waiters(pool, 1)
        await settle()
        assert len(launcher.started) == 2
        launcher.ready(1)
        await settle()
        assert later[0].result() is launcher.started[1]
        pool.release(later[0].result())
        await pool.close()

    run(scenario)


def test_a_replica_that_exits_while_starting_is_replaced_for_the_queued() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        calls = waiters(pool, 1)
        await settle()
        launcher.die(0, code=3)
        await settle()
        assert launcher.started[0] not in pool.replicas
        assert pool.start_error is not None and "exited with 3 while starting" in pool.start_error
        assert len(launcher.started) == 2  # a replacement for the one still waiting
        assert not calls[0].done()
        launcher.ready(1)
        await settle()
        assert calls[0].result() is launcher.started[1]
        assert pool.start_error is None
        pool.release(calls[0].result())
        await pool.close()

    run(scenario)


def test_the_queued_see_why_no_replica_came_when_their_deadline_passes() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        waiting = asyncio.ensure_future(pool.acquire(clock.now + 0.2))
        await settle()
        launcher.die(0, code=3)
        await settle()
        launcher.die(1, code=3)  # the replacement dies too
        with pytest.raises(DeadlineExceeded) as caught:
            await waiting
        assert caught.value.status == 504
        assert "exited with 3 while starting" in caught.value.message
        await pool.close()

    run(scenario)


def test_a_launcher_that_cannot_start_fails_the_queued_with_503() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher(broken=OSError("no free port"))
        pool = make(clock, launcher)
        calls = waiters(pool, 2)
        await settle()
        for t in calls:
            error = t.exception()
            assert isinstance(error, EdgeInferError) and error.status == 503
            assert "cannot start a replica: no free port" in error.message
        await pool.close()

    run(scenario)


def test_a_ready_replica_that_dies_is_dropped_and_the_next_request_starts_one() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        calls = waiters(pool, 1)
        await settle()
        launcher.ready(0)
        await settle()
        pool.release(calls[0].result())
        launcher.die(0, code=-9)
        await settle()
        assert pool.status().ready == 0
        assert pool.try_acquire() is None
        later = waiters(pool, 1)
        await settle()
        launcher.ready(1)
        await settle()
        assert later[0].result() is launcher.started[1]
        await pool.close()

    run(scenario)


# -- the supervisor hands placements and the launcher to its pools ----------------------


def test_the_supervisor_builds_pools_on_the_placements_it_is_given() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        seen: list[str] = []
        sup = Supervisor(
            ModelConfig(models=[spec(**{"initial-scale": 1})]),
            launcher=launcher,
            clock=clock,
            tick=3600,
            on_cold_start=lambda model, cold: seen.append(model),
        )
        await sup.start({"m": Placement("m", (WASM,))})
        await settle()
        assert launcher.opened
        assert sup.pool("m").placement == Placement("m", (WASM,))
        assert [r.tier for r in launcher.started] == [WASM]  # initial-scale, on its tier
        launcher.ready(0)
        await settle()
        assert seen == ["m"]
        await sup.stop()
        assert launcher.closed
        process = launcher.started[0].process
        assert isinstance(process, FakeProcess) and process.terminated

    run(scenario)
