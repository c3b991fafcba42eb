"""One model's queue of requests waiting for a replica: bounded, by priority class,
fair across tenants within a class, each caller with its own deadline.

Each waiter holds a :class:`Ticket`: its :class:`~runtime.spec.traffic.Priority` and
its tenant (the gateway's key name, or a fairness id the key may set). Items go to the
highest class first; inside a class, tenants take turns (round-robin, one item each),
and each tenant's waiters keep their arrival order. So a burst from one tenant cannot
starve another tenant's steady stream: the burst only waits behind itself.

The queue knows nothing of replicas: the pool hands items out with :meth:`dispatch`
(a ``take`` that returns a slot or None) and fails every waiter with :meth:`fail_all`.
Queue full: ``Overloaded`` (503 with Retry-After), except that a critical waiter takes
the place of the newest sheddable one, which gets ``RateLimited`` (429); a sheddable
request refused because the model is saturated gets ``Shed`` (a 429 too); deadline
passed: ``DeadlineExceeded`` (504). Tenants exist only while they have waiters, so
their number is bounded by ``max_queue``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from runtime.errors import DeadlineExceeded, Overloaded, RateLimited, Shed
from runtime.scaling.service_time import deadline_problem
from runtime.spec.traffic import Priority

__all__ = ["STANDARD", "RequestQueue", "Ticket", "shed_message"]

T = TypeVar("T")
_Waiter = asyncio.Future


@dataclass(frozen=True)
class Ticket:
    """What a waiting request is: its class and its tenant (who it is fair to).
    ``leave_free``: slots a request of this ticket leaves free for others when it takes
    one without waiting (the gateway gives sheddable requests a headroom)."""

    priority: Priority = Priority.STANDARD
    tenant: str = ""
    leave_free: int = 0


STANDARD = Ticket()


def shed_message(model: str) -> str:
    """What a sheddable request refused at a saturated ``model`` is told."""
    return (
        f"model {model!r} is saturated and this request is sheddable: refused rather "
        "than queued; retry later"
    )


class _Class(Generic[T]):
    """One priority class: each tenant's waiters in arrival order, tenants in turn."""

    def __init__(self) -> None:
        self.tenants: OrderedDict[str, deque[_Waiter[T]]] = OrderedDict()

    def push(self, tenant: str, waiter: _Waiter[T]) -> None:
        self.tenants.setdefault(tenant, deque()).append(waiter)

    def head(self) -> _Waiter[T] | None:
        """The waiter whose turn it is (waiters that gave up are dropped)."""
        while self.tenants:
            tenant, waiters = next(iter(self.tenants.items()))
            while waiters and waiters[0].done():
                waiters.popleft()
            if waiters:
                return waiters[0]
            del self.tenants[tenant]
        return None

    def pop(self) -> _Waiter[T]:
        """Take :meth:`head` (call it first) and send its tenant to the back."""
        tenant, waiters = next(iter(self.tenants.items()))
        waiter = waiters.popleft()
        if waiters:
            self.tenants.move_to_end(tenant)
        else:
            del self.tenants[tenant]
        return waiter

    def remove(self, tenant: str, waiter: _Waiter[T]) -> None:
        waiters = self.tenants.get(tenant)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self.tenants[tenant]

    def ahead_of(self, tenant: str) -> int:
        """Waiters served before a new one of ``tenant`` joins at its back: tenants take
        turns, so a tenant before it in the rotation goes once more than it has waiters
        queued, one after it as often (a new tenant joins the rotation last)."""
        own = len(self.tenants.get(tenant, ()))
        ahead, before = own, True
        for other, waiters in self.tenants.items():
            if other == tenant:
                before = False
            else:
                ahead += min(len(waiters), own + 1 if before else own)
        return ahead

    def __len__(self) -> int:
        return sum(len(w) for w in self.tenants.values())


class RequestQueue(Generic[T]):
    """Callers of model ``model`` waiting for a ``T`` (a replica slot), at most
    ``max_queue`` at once; ``clock`` is the seconds deadlines are given in."""

    def __init__(self, model: str, max_queue: int, clock: Callable[[], float]) -> None:
        self.model = model
        self.max_queue = max_queue
        self._clock = clock
        self._classes: dict[Priority, _Class[T]] = {p: _Class() for p in Priority}
        self._tickets: dict[_Waiter[T], Ticket] = {}  # every waiter still queued

    def __len__(self) -> int:
        return len(self._tickets)

    def ahead(self, ticket: Ticket) -> int:
        """Waiters that would be served before a new waiter holding ``ticket``."""
        higher = sum(1 for t in self._tickets.values() if t.priority.rank < ticket.priority.rank)
        return higher + self._classes[ticket.priority].ahead_of(ticket.tenant)

    def goes_first(self, ticket: Ticket) -> bool:
        """Whether a waiter of ``ticket``'s class or a higher one is queued (then a new
        request of that ticket may not take a free slot past it)."""
        if not self._tickets:  # the usual case, per request: nobody waits
            return False
        return any(t.priority.rank <= ticket.priority.rank for t in self._tickets.values())

    def join(self, ticket: Ticket = STANDARD) -> asyncio.Future[T]:
        """A place at the back of ``ticket``'s tenant in its class; Overloaded when
        ``max_queue`` are waiting (a critical ticket first evicts the newest sheddable
        waiter, which gets RateLimited)."""
        if len(self._tickets) >= self.max_queue and not (
            ticket.priority is Priority.CRITICAL and self._evict_sheddable()
        ):
            raise Overloaded(
                f"model {self.model!r} has {len(self._tickets)} requests waiting already; "
                "retry later",
                retry_after=1.0,
            )
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._classes[ticket.priority].push(ticket.tenant, waiter)
        self._tickets[waiter] = ticket
        return waiter

    def _evict_sheddable(self) -> bool:
        newest = next(
            (
                w
                for w, t in reversed(self._tickets.items())
                if t.priority is Priority.SHEDDABLE and not w.done()
            ),
            None,
        )
        if newest is None:
            return False
        self._drop(newest)
        newest.set_exception(
            RateLimited(
                f"model {self.model!r} is saturated: a critical request took this "
                "sheddable request's place in the queue; retry later",
                retry_after=1.0,
            )
        )
        return True

    def admit(self, ticket: Ticket, *, slots: int, service: float | None, left: float) -> None:
        """Before a request of ``ticket`` that found no free slot joins: Shed
        (429) when it is sheddable and the model is saturated (``slots`` > 0 on ready
        replicas, all taken); DeadlineExceeded (504) when the waiters served before it,
        spread over the ``slots``, and its own service (``service`` seconds each,
        measured; None: unknown) need more than the ``left`` seconds to its deadline.
        Nothing is refused while no replica is ready (a cold start is no saturation)."""
        if not slots:
            return
        if ticket.priority is Priority.SHEDDABLE:
            raise Shed(shed_message(self.model), model=self.model)
        problem = deadline_problem(
            ahead=self.ahead(ticket), slots=slots, service=service, left=left, model=self.model
        )
        if problem is not None:
            raise DeadlineExceeded(problem)

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
        self._drop(waiter)

    def _drop(self, waiter: asyncio.Future[T]) -> None:
        ticket = self._tickets.pop(waiter, None)
        if ticket is not None:
            self._classes[ticket.priority].remove(ticket.tenant, waiter)

    def dispatch(self, take: Callable[[], T | None]) -> None:
        """Hand ``take()``'s items to the waiters, highest class first and tenants in
        turn within a class, until it has none left."""
        if not self._tickets:  # per released slot: nobody waits, nothing to hand out
            return
        for priority in Priority:  # declared highest first
            queue = self._classes[priority]
            while queue.head() is not None:
                item = take()
                if item is None:
                    return
                waiter = queue.pop()
                self._tickets.pop(waiter, None)
                waiter.set_result(item)

    def fail_all(self, error: Exception) -> None:
        """Every waiter gets ``error``."""
        waiters = list(self._tickets)
        for queue in self._classes.values():
            queue.tenants.clear()
        self._tickets.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
