"""``gateway.retry.send_with_retry`` over a fake pool of fake replicas (no processes, no
HTTP: what each attempt raised is given). The same rules with a real worker killed in
the instant its connection is made: tests/gateway/test_faults.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.retry import DEATH_WAIT_S, MAX_REPLAYS, send_with_retry
from runtime.errors import ReplicaFailed, ReplicaLost, ReplicaUnreachable, UpstreamError
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import Replica, ReplicaState


class FakeProcess:
    """A fake process handle: exits when told (``exit``), or never."""

    def __init__(self, pid: int, exited: bool) -> None:
        self.pid = pid
        self.returncode: int | None = -9 if exited else None
        self._gone = asyncio.Event()
        if exited:
            self._gone.set()

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None

    async def wait(self) -> int:
        await self._gone.wait()
        return -9


class FakePool:
    """A fake pool: hands out its replicas in order, records what it was told."""

    def __init__(self, *dead: bool) -> None:
        self.replicas = [
            Replica("m", 1000 + i, FakeProcess(i + 1, gone), 0.0, state=ReplicaState.READY)
            for i, gone in enumerate(dead)
        ]
        self.given: list[int] = []
        self.taken_out: list[int] = []
        self.released: list[tuple[int, float | None]] = []

    def try_acquire(self, ticket: Ticket = STANDARD) -> Replica | None:
        replica = self.replicas[len(self.given)]
        self.given.append(replica.port)
        return replica

    async def acquire(self, deadline: float, *, ticket: Ticket = STANDARD) -> Replica:
        raise AssertionError("try_acquire always has one")

    def release(self, replica: Replica, *, seconds: float | None = None) -> None:
        self.released.append((replica.port, seconds))

    def take_out(self, replica: Replica, reason: str) -> None:
        self.taken_out.append(replica.port)


Send = Callable[[Replica], Awaitable[int]]


def attempts(*failures: ReplicaFailed | None) -> Send:
    """A ``send`` that raises each of ``failures`` in turn (None: answers its port)."""
    queue = list(failures)

    async def send(replica: Replica) -> int:
        failure = queue.pop(0)
        if failure is not None:
            raise failure
        return replica.port

    return send


def run(pool: FakePool, send: Send, deadline: float = 60.0) -> int:
    async def go() -> int:
        return await send_with_retry(
            pool,  # type: ignore[arg-type]
            time.monotonic() + deadline,
            time.monotonic,
            send,
        )

    return asyncio.run(go())


def test_a_request_lost_on_a_dead_replica_goes_to_the_next() -> None:
    pool = FakePool(True, False)
    assert run(pool, attempts(ReplicaLost("reset"), None)) == 1001
    assert pool.given == [1000, 1001]
    assert pool.released[0] == (1000, None)  # not a service time
    assert pool.taken_out == []  # dead already: the pool saw it exit


def test_a_request_lost_on_a_live_replica_is_not_sent_again() -> None:
    """No process exit within the wait: the replica may have run it and live on (or
    be someone else's server); the 502 stands."""
    pool = FakePool(False, False)

    async def go() -> tuple[BaseException, float]:
        began = time.monotonic()
        with pytest.raises(ReplicaLost) as caught:
            await send_with_retry(
                pool,  # type: ignore[arg-type]
                time.monotonic() + 60,
                time.monotonic,
                attempts(ReplicaLost("reset"), None),
            )
        return caught.value, time.monotonic() - began

    error, took = asyncio.run(go())
    assert isinstance(error, ReplicaLost)
    assert pool.given == [1000]
    assert took >= DEATH_WAIT_S * 0.9  # it waited for an exit that never came


def test_replays_are_bounded_so_a_request_that_kills_replicas_stops() -> None:
    pool = FakePool(*([True] * (MAX_REPLAYS + 2)))
    send = attempts(*[ReplicaLost("reset")] * (MAX_REPLAYS + 1), None)
    with pytest.raises(ReplicaLost):
        run(pool, send)
    assert len(pool.given) == MAX_REPLAYS + 1


def test_unreachable_replicas_are_taken_out_and_other_failures_not_retried() -> None:
    pool = FakePool(False, False, False)
    send = attempts(ReplicaUnreachable("refused"), UpstreamError("cut"), None)
    with pytest.raises(UpstreamError):
        run(pool, send)
    assert pool.given == [1000, 1001]
    assert pool.taken_out == [1000]
