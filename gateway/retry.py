"""Sending a request again when none of its bytes reached the replica.

A replica that was just killed (or taken out as unhealthy) still gets requests for the
few milliseconds before the supervisor notices: their connections are refused, or
closed before the request was written. Nothing ran, so the request is safe to send
elsewhere whatever its method: the replica is taken out of rotation (the pool kills
and replaces it) and the request takes the next free replica, or waits in the queue
for a new one, within its own deadline. A failure after the request was written is
never retried here (the replica may have run it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runtime.errors import ReplicaUnreachable
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import Replica
from runtime.scaling.source import ReplicaPool

__all__ = ["MAX_ATTEMPTS", "send_with_retry"]

# Each failed attempt takes one replica out, so this bounds the loop only where
# replicas are external (never taken out); one replica per attempt otherwise.
MAX_ATTEMPTS = 4

T = TypeVar("T")


async def send_with_retry(
    pool: ReplicaPool,
    deadline: float,
    clock: Callable[[], float],
    send: Callable[[Replica], Awaitable[T]],
    *,
    ticket: Ticket = STANDARD,
    acquired: Callable[[Replica, float, bool], None] | None = None,
) -> T:
    """``await send(replica)`` on a replica of ``pool`` (a slot taken for ``ticket`` and
    given back around it); again on another while it raises :class:`ReplicaUnreachable`,
    up to :data:`MAX_ATTEMPTS` and ``deadline`` (``clock`` seconds). ``acquired(replica,
    asked_at, waited)`` hears of each slot taken. Only an attempt the replica ran counts
    toward the model's measured service time."""
    attempt = 0
    while True:
        attempt += 1
        asked_at = clock()
        replica = pool.try_acquire(ticket)
        waited = replica is None
        if replica is None:
            replica = await pool.acquire(deadline, ticket=ticket)
        if acquired is not None:
            acquired(replica, asked_at, waited)
        held: float | None = time.perf_counter()
        try:
            return await send(replica)
        except ReplicaUnreachable as exc:
            held = None  # nothing ran: not a service time
            pool.take_out(replica, exc.message)
            if attempt >= MAX_ATTEMPTS or clock() >= deadline:
                raise
        finally:
            pool.release(replica, seconds=None if held is None else time.perf_counter() - held)
