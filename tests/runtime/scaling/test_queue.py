"""runtime.scaling.queue: a bounded first-come-first-served queue with deadlines (no
replicas: the items handed out are plain strings; the clock is a FAKE one)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.errors import DeadlineExceeded, ModelNotReady, Overloaded
from runtime.scaling.queue import RequestQueue
from tests.runtime.scaling.fakes import FakeClock, settle

FAR = 1e9


def test_items_go_to_waiters_in_arrival_order_and_the_bound_holds() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=3, clock=FakeClock())
        released: list[str] = []
        tasks = [
            asyncio.ensure_future(q.wait(q.join(), FAR, released.append, lambda: None))
            for _ in range(3)
        ]
        with pytest.raises(Overloaded):
            q.join()
        items = iter(["a", "b"])
        q.dispatch(lambda: next(items, None))
        await settle()
        assert [t.result() for t in tasks[:2]] == ["a", "b"]
        assert not tasks[2].done() and len(q) == 1
        q.fail_all(ModelNotReady("gone"))
        await settle()
        assert isinstance(tasks[2].exception(), ModelNotReady)
        assert released == [] and len(q) == 0

    asyncio.run(scenario())


def test_a_waiter_handed_an_item_as_it_is_cancelled_gives_it_back() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=2, clock=FakeClock())
        released: list[str] = []
        task = asyncio.ensure_future(q.wait(q.join(), FAR, released.append, lambda: None))
        await settle()
        q.dispatch(lambda: "slot")  # handed the slot...
        task.cancel()  # ...and cancelled before it ran again
        with pytest.raises(asyncio.CancelledError):
            await task
        assert released == ["slot"]
        assert len(q) == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_is_skipped_and_takes_nothing() -> None:
    async def scenario() -> None:
        q: RequestQueue[str] = RequestQueue("m", max_queue=2, clock=FakeClock())
        first = asyncio.ensure_future(q.wait(q.join(), FAR, lambda _: None, lambda: None))
        second = asyncio.ensure_future(q.wait(q.join(), FAR, lambda _: None, lambda: None))
        await settle()
        first.cancel()
        await settle()
        taken: list[str] = []

        def take() -> str:
            taken.append("x")
            return "x"

        q.dispatch(take)
        await settle()
        assert second.result() == "x" and taken == ["x"]  # taken once, for the live one

    asyncio.run(scenario())


def test_the_deadline_error_says_why_no_replica_came() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        q: RequestQueue[str] = RequestQueue("m", max_queue=2, clock=clock)
        with pytest.raises(DeadlineExceeded) as caught:
            await q.wait(q.join(), clock.now, lambda _: None, lambda: "it exited with 3")
        assert "'m'" in caught.value.message and "(it exited with 3)" in caught.value.message
        assert len(q) == 0

    asyncio.run(scenario())
