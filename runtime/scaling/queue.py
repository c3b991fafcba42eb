"""One model's queue of requests waiting for a replica: bounded, first come first
served, each caller with its own deadline.

The queue knows nothing of replicas: the pool hands items out with :meth:`dispatch`
(a ``take`` that returns a slot or None) and fails every waiter with :meth:`fail_all`.
Queue full: ``Overloaded`` (503 with Retry-After); deadline passed:
``DeadlineExceeded`` (504).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from runtime.errors import DeadlineExceeded, Overloaded

__all__ = ["RequestQueue"]

T = TypeVar("T")


class RequestQueue(Generic[T]):
    """Callers of model ``model`` waiting for a ``T`` (a replica slot), at most
    ``max_queue`` at once; ``clock`` is the seconds deadlines are given in."""

    def __init__(self, model: str, max_queue: int, clock: Callable[[], float]) -> None:
        self.model = model
        self.max_queue = max_queue
        self._clock = clock
        self._waiters: deque[asyncio.Future[T]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def join(self) -> asyncio.Future[T]:
        """A place at the back of the queue; Overloaded when ``max_queue`` are waiting."""
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"model {self.model!r} has {len(self._waiters)} requests waiting already; "
                "retry later",
                retry_after=1.0,
            )
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def wait(
        self,
        waiter: asyncio.Future[T],
        deadline: float,
        release: Callable[[T], None],
        why: Callable[[], str | None],
    ) -> T:
        """What ``waiter`` is handed by ``deadline``; DeadlineExceeded (with ``why()``,
        the reason no replica came, if any) when it passes first. A waiter that gives up
        (deadline, cancellation) leaves the queue; one handed an item just as it gave up
        hands it back through ``release``."""
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, deadline - self._clock()))
        except BaseException:
            self._leave(waiter, release)
            raise
        if not done:
            self._leave(waiter, release)
            reason = why()
            raise DeadlineExceeded(
                f"no replica of model {self.model!r} was free before the request's "
                f"deadline" + (f" ({reason})" if reason else "")
            )
        return waiter.result()

    def _leave(self, waiter: asyncio.Future[T], release: Callable[[T], None]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            release(waiter.result())
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def dispatch(self, take: Callable[[], T | None]) -> None:
        """Hand ``take()``'s items to the waiters in order, until it has none left."""
        while self._waiters:
            if self._waiters[0].done():  # gave up; it leaves on its own
                self._waiters.popleft()
                continue
            item = take()
            if item is None:
                return
            self._waiters.popleft().set_result(item)

    def fail_all(self, error: Exception) -> None:
        """Every waiter gets ``error``."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
