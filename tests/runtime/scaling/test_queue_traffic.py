"""runtime.scaling.queue's priority classes and fairness, and the pool's shedding and
deadline refusals (runtime.scaling.service_time), on a FAKE clock and FAKE launcher:
items are plain strings or fake replicas, nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from runtime.errors import DeadlineExceeded, Overloaded, RateLimited
from runtime.scaling.pool import ModelPool
from runtime.scaling.queue import RequestQueue, Ticket
from runtime.scaling.service_time import ServiceTime, deadline_problem
from runtime.spec.traffic import Priority
from tests.runtime.scaling.fakes import FakeClock, FakeLauncher, settle
from tests.runtime.scaling.test_pool_table import make

FAR = 1e9
CRIT, STD, SHED = Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def served_order(joins: list[Ticket], max_queue: int = 100) -> list[int]:
    """The order (indices into ``joins``) in which one item at a time reaches them."""
    order: list[int] = []

    async def scenario() -> None:
        q: RequestQueue[int] = RequestQueue("m", max_queue=max_queue, clock=FakeClock())
        waiters = [q.join(t) for t in joins]
        for n in range(len(joins)):
            q.dispatch(iter([n, None]).__next__)
        await settle()
        by_item = {w.result(): i for i, w in enumerate(waiters)}
        order.extend(by_item[n] for n in range(len(joins)))

    run(scenario)
    return order


def t(priority: Priority, tenant: str = "a") -> Ticket:
    return Ticket(priority, tenant)


# joins -> the order they are served in
ORDERS = [
    # one class, one tenant: first come, first served
    ([t(STD), t(STD), t(STD)], [0, 1, 2]),
    # higher classes first, arrival order inside a class
    ([t(SHED), t(STD), t(CRIT), t(STD), t(CRIT)], [2, 4, 1, 3, 0]),
    # a burst of tenant a, then b's requests: they take turns
    ([t(STD, "a"), t(STD, "a"), t(STD, "a"), t(STD, "b"), t(STD, "b")], [0, 3, 1, 4, 2]),
    # three tenants in turn, the class above still first
    (
        [t(STD, "a"), t(STD, "a"), t(STD, "b"), t(STD, "c"), t(CRIT, "a")],
        [4, 0, 2, 3, 1],
    ),
]


@pytest.mark.parametrize(("joins", "order"), ORDERS)
def test_classes_go_first_and_tenants_take_turns(joins: list[Ticket], order: list[int]) -> None:
    assert served_order(joins) == order


def test_a_critical_request_takes_the_place_of_the_newest_sheddable_one() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=3, clock=FakeClock())
        old_shed, std, new_shed = q.join(t(SHED)), q.join(t(STD)), q.join(t(SHED))
        with pytest.raises(Overloaded):
            q.join(t(STD))  # a standard one does not evict
        crit = q.join(t(CRIT))
        assert isinstance(new_shed.exception(), RateLimited)
        assert new_shed.exception().retry_after  # type: ignore[union-attr]
        assert not old_shed.done() and len(q) == 3
        items = iter(["x", "y", "z"])
        q.dispatch(lambda: next(items, None))
        assert (crit.result(), std.result(), old_shed.result()) == ("x", "y", "z")
        q.join(t(CRIT))
        q.join(t(CRIT))
        q.join(t(CRIT))
        with pytest.raises(Overloaded):
            q.join(t(CRIT))  # no sheddable left to evict

    run(scenario)


def test_ahead_counts_higher_classes_and_turns() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=100, clock=FakeClock())
        for _ in range(5):
            q.join(t(STD, "burst"))
        q.join(t(CRIT, "x"))
        # a new tenant waits for one of the burst's turns and the critical one
        assert q.ahead(t(STD, "new")) == 2
        assert q.ahead(t(STD, "burst")) == 6
        assert q.ahead(t(CRIT, "y")) == 1
        assert q.ahead(t(SHED, "z")) == 6

    run(scenario)


def test_a_tenant_exists_only_while_it_has_waiters() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=100, clock=FakeClock())
        tasks = [
            asyncio.ensure_future(q.wait(q.join(t(STD, f"id{i}")), FAR, lambda _: None, str))
            for i in range(10)
        ]
        await settle()
        for task in tasks:
            task.cancel()
        await settle()
        assert len(q) == 0
        q.dispatch(lambda: "x")
        assert all(not c.tenants for c in q._classes.values())

    run(scenario)


# -- service time and deadlines ------------------------------------------------------

# (ahead, slots, service, left) -> refused?
DEADLINES = [
    (0, 1, None, 0.001, False),  # not measured yet: never refused
    (0, 1, 0.1, 0.5, False),
    (9, 2, 0.1, 0.5, False),  # 5 waves of 0.1 s fit 0.5 s
    (10, 2, 0.1, 0.5, True),  # 6 waves do not
    (0, 1, 1.0, 0.5, True),  # its own service alone is longer
]


@pytest.mark.parametrize(("ahead", "slots", "service", "left", "refused"), DEADLINES)
def test_deadline_problem(
    ahead: int, slots: int, service: float | None, left: float, refused: bool
) -> None:
    problem = deadline_problem(ahead=ahead, slots=slots, service=service, left=left, model="m")
    assert (problem is not None) == refused
    if problem:
        assert f"{ahead} requests" in problem and "deadline" in problem


def test_service_time_is_an_ewma_and_ignores_nonsense() -> None:
    s = ServiceTime(alpha=0.5)
    s.record(1.0)
    s.record(3.0)
    s.record(-1.0)
    s.record(float("nan"))
    assert s.seconds == 2.0 and s.samples == 2


# -- the pool: shedding and deadline refusals ------------------------------------------


async def ready_pool(clock: FakeClock, launcher: FakeLauncher) -> ModelPool:
    """One ready replica of one slot, its service time measured at 2 s."""
    pool = make(clock, launcher, scaling={"container-concurrency": 1, "max-scale": 1})
    first = asyncio.ensure_future(pool.acquire(FAR))
    await settle()
    launcher.ready(0)
    await settle()
    pool.release(await first, seconds=2.0)
    return pool


def test_a_saturated_model_sheds_sheddable_requests_and_queues_the_rest() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = await ready_pool(clock, launcher)
        busy = pool.try_acquire()
        assert busy is not None
        with pytest.raises(RateLimited) as shed:
            await pool.acquire(FAR, ticket=t(SHED))
        assert "sheddable" in shed.value.message and shed.value.retry_after
        std = asyncio.ensure_future(pool.acquire(FAR, ticket=t(STD)))
        await settle()
        assert pool.status().queued == 1
        pool.release(busy, seconds=2.0)
        await settle()
        assert std.result() is busy

    run(scenario)


def test_sheddable_requests_leave_the_headroom_free() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = await ready_pool(clock, launcher)
        # one free slot, and a sheddable request must leave one free: refused
        assert pool.try_acquire(Ticket(SHED, "a", leave_free=1)) is None
        with pytest.raises(RateLimited):
            await pool.acquire(FAR, ticket=Ticket(SHED, "a", leave_free=1))
        assert pool.try_acquire(Ticket(SHED, "a")) is not None

    run(scenario)


def test_a_deadline_the_queue_cannot_meet_is_refused_at_once() -> None:
    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        pool = await ready_pool(clock, launcher)  # measured: 2 s per request
        busy = pool.try_acquire()
        assert busy is not None
        queued = asyncio.ensure_future(pool.acquire(clock() + 10))
        await settle()
        with pytest.raises(DeadlineExceeded) as refused:
            await pool.acquire(clock() + 3.0)  # 1 ahead on 1 slot: 2 waves of 2 s
        assert "1 requests are ahead" in refused.value.message
        assert pool.status().queued == 1
        late = asyncio.ensure_future(pool.acquire(clock() + 4.5))  # 4 s fits
        await settle()
        assert not late.done() and pool.status().queued == 2
        pool.release(busy, seconds=2.0)
        await settle()
        assert queued.done()
        late.cancel()
        await settle()

    run(scenario)
