"""Sending a request again when its replica never began to answer it.

A replica that was just killed (or taken out as unhealthy) still gets requests for the
few milliseconds before the supervisor notices: their connections are refused, or
closed before the request was written. Nothing ran, so the request is safe to send
elsewhere whatever its method: the replica is taken out of rotation (the pool kills
and replaces it) and the request takes the next free replica, or waits in the queue
for a new one, within its own deadline.

A request that was written and then lost its connection before the head of an answer
came (:class:`ReplicaLost`: the proxy raises it only for requests safe to run twice,
which every inference call is) is sent again only when its replica is known dead (its
process exited): the kill that reset the connection, a connection opened into the
backlog of a replica in the instant it died. The client has no byte of an answer, so
nothing it saw is repeated. Such a replay happens at most :data:`MAX_REPLAYS` times
per request, so a request that itself kills its replica takes down no more than that.
A failure after an answer began is never retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runtime.errors import ReplicaFailed, ReplicaLost, ReplicaUnreachable
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import Replica
from runtime.scaling.source import ReplicaPool

__all__ = ["DEATH_WAIT_S", "MAX_ATTEMPTS", "MAX_REPLAYS", "send_with_retry"]

log = logging.getLogger("edgeinfer.retry")

# Each failed attempt takes one replica out, so this bounds the loop only where
# replicas are external (never taken out); one replica per attempt otherwise.
MAX_ATTEMPTS = 4
# Replays of a request a replica had received (see the module's docstring).
MAX_REPLAYS = 1
# How long a lost connection's replica is given to be seen exiting: a killed process
# resets its sockets a moment before its exit can be observed.
DEATH_WAIT_S = 0.5

T = TypeVar("T")


async def send_with_retry(
    pool: ReplicaPool,
    deadline: float,
    clock: Callable[[], float],
    send: Callable[[Replica], Awaitable[T]],
    *,
    ticket: Ticket = STANDARD,
    acquired: Callable[[Replica, float, bool], None] | None = None,
    request_id: str = "",
) -> T:
    """``await send(replica)`` on a replica of ``pool`` (a slot taken for ``ticket`` and
    given back around it); again on another while it raises :class:`ReplicaUnreachable`,
    or :class:`ReplicaLost` on a replica whose process exited (at most
    :data:`MAX_REPLAYS` times), up to :data:`MAX_ATTEMPTS` and ``deadline`` (``clock``
    seconds). ``acquired(replica, asked_at, waited)`` hears of each slot taken. Only an
    attempt the replica ran to its end counts toward the model's measured service time.
    Each replica failure is logged with ``request_id`` and the replica's port and pid."""
    attempt = replays = 0
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
            again = attempt < MAX_ATTEMPTS and clock() < deadline
            _failed(replica, request_id, exc, again)
            if not again:
                raise
        except ReplicaLost as exc:
            held = None
            left = deadline - clock()
            again = (
                replays < MAX_REPLAYS
                and attempt < MAX_ATTEMPTS
                and left > 0
                and await replica.exited(min(DEATH_WAIT_S, left))
            )
            _failed(replica, request_id, exc, again)
            if not again:
                raise
            replays += 1  # the pool saw the exit: the dead replica is not picked again
        except ReplicaFailed as exc:
            _failed(replica, request_id, exc, False)
            raise
        finally:
            pool.release(replica, seconds=None if held is None else time.perf_counter() - held)


def _failed(replica: Replica, request_id: str, exc: ReplicaFailed, again: bool) -> None:
    """One line per failed attempt: what the soak's unexpected failures are matched by."""
    log.warning(
        "request %s to %s on :%d (pid %d) failed (%s): %s; %s",
        request_id or "-",
        replica.model,
        replica.port,
        replica.process.pid,
        exc.code,
        exc.message,
        "sent again" if again else "not sent again",
    )
