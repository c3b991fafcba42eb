"""Health checks and crash-loop back-off: the decisions as tables, then a pool with
FAKE replicas (tests/runtime/scaling/fakes.py) taking an unhealthy one out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from runtime.errors import ModelNotReady
from runtime.scaling.health import HealthConfig, backoff_seconds, judge
from runtime.scaling.pool import ModelPool
from runtime.scaling.replica import ReplicaState
from tests.runtime.scaling.fakes import FakeClock, FakeLauncher, FakeLiveness, settle
from tests.runtime.scaling.test_pool_table import FAR, make

CONFIG = HealthConfig(failure_threshold=3, progress_timeout_seconds=10)

# misses, in flight, seconds since progress -> unhealthy?
JUDGE = [
    (0, 0, 0.0, None),
    (2, 0, 0.0, None),
    (3, 0, 0.0, "missed 3 liveness probes"),
    (0, 0, 500.0, None),  # idle: no answer owed
    (0, 2, 9.0, None),
    (0, 2, 11.0, "2 request(s) in flight and no byte"),
]


@pytest.mark.parametrize(("misses", "in_flight", "since", "reason"), JUDGE)
def test_judge(misses: int, in_flight: int, since: float, reason: str | None) -> None:
    got = judge(CONFIG, misses=misses, in_flight=in_flight, last_progress=100.0, now=100 + since)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


def test_judge_has_no_watchdog_until_a_progress_timeout_is_set() -> None:
    # The pool sets it to the model's timeout when the config leaves it unset.
    config = HealthConfig(progress_timeout_seconds=None)
    assert judge(config, misses=0, in_flight=5, last_progress=0.0, now=1e6) is None


def test_the_watchdog_defaults_to_the_models_timeout() -> None:
    async def scenario() -> None:
        liveness = FakeLiveness()
        launcher = FakeLauncher(liveness=liveness)
        pool = make(
            FakeClock(),
            launcher,
            health=HealthConfig(period_seconds=0.001),
            scaling={"timeout": "60s"},
        )
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        a = first.result()
        a.last_progress = time.monotonic() - 59
        seen = liveness.probes
        await until(lambda: liveness.probes >= seen + 3)
        assert a.state is ReplicaState.READY  # 59 s: under the model's 60 s
        a.last_progress = time.monotonic() - 61
        await until(lambda: a.state is ReplicaState.STOPPED)
        assert "limit 60s" in (pool.status().last_error or "")
        pool.release(a)
        await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)]
)
def test_backoff_doubles_up_to_its_maximum(failures: int, delay: float) -> None:
    config = HealthConfig(backoff_initial_seconds=1, backoff_max_seconds=60)
    assert backoff_seconds(config, failures) == delay


async def until(what: Callable[[], bool]) -> None:
    """Wait for the health loop's probes (real tasks) to reach a state."""
    for _ in range(5000):
        if what():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def pool_with_liveness(**kw: Any) -> tuple[ModelPool, FakeLauncher, FakeLiveness]:
    liveness = FakeLiveness()
    launcher = FakeLauncher(liveness=liveness)
    health = HealthConfig(period_seconds=0.001, failure_threshold=3, **kw)
    pool = make(FakeClock(), launcher, health=health, scaling={"container-concurrency": 1})
    return pool, launcher, liveness


def test_a_frozen_replica_leaves_rotation_is_killed_and_the_queued_get_a_new_one() -> None:
    async def scenario() -> None:
        pool, launcher, liveness = pool_with_liveness()
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        a = first.result()
        await until(lambda: liveness.probes >= 2)  # probed while healthy: stays
        assert a.state is ReplicaState.READY
        liveness.frozen.add(a.url)
        waiting = asyncio.ensure_future(pool.acquire(FAR))  # queued behind a's one slot
        await until(lambda: a.state is ReplicaState.STOPPED)
        assert a.process.returncode == -9  # killed: a frozen process handles no SIGTERM
        assert a not in pool.replicas
        assert pool.status().unhealthy == 1
        assert "missed 3 liveness probes" in (pool.status().last_error or "")
        await settle()
        assert len(launcher.started) == 2  # the waiter started a replacement
        launcher.ready(1)
        await settle()
        assert waiting.result() is launcher.started[1]
        pool.release(a)  # its request failed at the proxy
        pool.release(waiting.result())
        await pool.close()

    asyncio.run(scenario())


def test_a_replica_with_requests_and_no_progress_is_taken_out_and_replaced() -> None:
    async def scenario() -> None:
        pool, launcher, _ = pool_with_liveness(progress_timeout_seconds=5)
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        a = first.result()
        a.last_progress = time.monotonic() - 6  # alive, but silent for 6 s
        await until(lambda: a.state is ReplicaState.STOPPED)
        assert "no byte of an answer" in (pool.status().last_error or "")
        await settle()
        assert len(launcher.started) == 2  # a serving replica is replaced at once
        pool.release(a)
        await pool.close()

    asyncio.run(scenario())


def test_a_replica_that_makes_progress_stays() -> None:
    async def scenario() -> None:
        pool, launcher, liveness = pool_with_liveness(progress_timeout_seconds=5)
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        a = first.result()
        a.last_progress = time.monotonic() - 6
        a.progressed()  # a byte went out just now
        seen = liveness.probes
        await until(lambda: liveness.probes >= seen + 5)
        assert a.state is ReplicaState.READY and pool.status().unhealthy == 0
        pool.release(a)
        await pool.close()

    asyncio.run(scenario())


def test_an_unreachable_replica_is_taken_out_and_replaced_for_the_queued() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.ready(0)
        await settle()
        a = first.result()
        pool.take_out(a, "connection refused")
        pool.release(a)
        assert pool.try_acquire() is None  # never handed out again
        again = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        assert len(launcher.started) == 2
        launcher.ready(1)
        await settle()
        assert again.result() is launcher.started[1]
        pool.release(again.result())
        await pool.close()

    asyncio.run(scenario())


def test_a_replica_that_dies_before_finishing_a_request_counts_as_a_crash() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        calls: list[tuple[str, str]] = []
        pool = make(clock, launcher, on_crash_loop=lambda m, e: calls.append((m, e)))
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.started[0].started = clock()  # started now (the fake says 0.0)
        launcher.ready(0)
        await settle()
        launcher.die(0, code=3)  # with its first request in flight
        await settle()
        pool.release(first.result())
        status = pool.status()
        assert status.failed_starts == 1 and status.backoff_seconds == 1.0
        assert calls == [("m", "a replica exited with 3 soon after it started")]
        # A deadline inside the back-off cannot see the next start: 503 at once.
        with pytest.raises(ModelNotReady, match="next try in 1s"):
            await pool.acquire(clock() + 0.5)
        assert len(launcher.started) == 1
        # Once a replica has served past the crash window, the loop is over.
        clock.now += 1.0
        later = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.started[1].started = clock()
        launcher.ready(1)
        await settle()
        pool.release(later.result())
        clock.now += 31
        pool.autoscale(clock())
        assert pool.status().failed_starts == 0
        await pool.close()

    asyncio.run(scenario())


def test_a_request_that_can_outwait_the_back_off_after_a_death_gets_the_next_replica() -> None:
    """A ready replica died with a request in flight (a crash, or a kill from outside:
    the soak's SIGKILL of a fresh worker): a request whose deadline is past the back-off
    waits for the next start instead of a 503 (the back-off here is 20 ms of real time:
    the pool sleeps it)."""

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        health = HealthConfig(backoff_initial_seconds=0.02)
        pool = make(clock, launcher, health=health)
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.started[0].started = clock()
        launcher.ready(0)
        await settle()
        launcher.die(0, code=-9)
        await settle()
        pool.release(first.result())
        assert pool.status().failed_starts == 1
        waiting = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        assert not waiting.done()  # no 503: it waits
        assert len(launcher.started) == 1
        await asyncio.sleep(0.05)  # past the back-off's own (earlier) timer
        await settle()
        assert len(launcher.started) == 2  # the start after the back-off
        launcher.ready(1)
        await settle()
        assert waiting.result() is launcher.started[1]
        pool.release(waiting.result())
        await pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_replica_killed_after_serving_is_no_crash() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = make(clock, launcher)
        first = asyncio.ensure_future(pool.acquire(FAR))
        await settle()
        launcher.started[0].started = clock()
        launcher.ready(0)
        await settle()
        pool.release(first.result())
        launcher.die(0, code=-9)
        await settle()
        assert pool.status().failed_starts == 0
        again = asyncio.ensure_future(pool.acquire(FAR))  # waits for a new one, no 503
        await settle()
        assert len(launcher.started) == 2 and not again.done()
        launcher.ready(1)
        await settle()
        pool.release(again.result())
        await pool.close()

    asyncio.run(scenario())


def test_back_off_grows_with_each_failed_load_and_the_manager_hears_each() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        calls: list[str] = []
        pool = make(clock, launcher, on_crash_loop=lambda m, e: calls.append(e))
        for i, delay in enumerate((1.0, 2.0, 4.0)):
            t = asyncio.ensure_future(pool.acquire(FAR))
            await settle()
            launcher.fail_load(i, "no such file")
            await settle()
            assert isinstance(t.exception(), ModelNotReady)
            assert pool.status().backoff_seconds == delay
            clock.now += delay
        assert len(calls) == 3 and all("no such file" in c for c in calls)
        await pool.close()

    asyncio.run(scenario())
