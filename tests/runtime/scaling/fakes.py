"""Fakes for the pool's table tests: no processes, no sockets, no real time.

- :class:`FakeClock`: a FAKE monotonic clock, moved only by the test.
- :class:`FakeProcess`: a FAKE worker process that exits when the test (or a stop)
  says so.
- :class:`FakeLauncher`: a FAKE launcher; each replica it starts becomes ready, fails
  to load or dies exactly when the test says, by its index in ``started``.
- :class:`FakeLiveness`: a FAKE liveness probe; a replica's URL answers alive unless the
  test froze it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.errors import ModelNotReady
from runtime.scaling.replica import ColdStart, Replica
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Tier

if TYPE_CHECKING:
    from runtime.scaling.pool import ModelPool


class FakeClock:
    """A FAKE monotonic clock: ``now`` is what the test set."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A FAKE worker process: alive until ``exit`` (or ``terminate``/``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.terminated = False
        self._exited = asyncio.Event()

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    def terminate(self) -> None:
        self.terminated = True
        self.exit(-15)

    def kill(self) -> None:
        self.exit(-9)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


@dataclass
class FakeReadiness:
    """A FAKE replica readiness: the test resolves ``outcome``; a process that exits
    first fails it, as a real worker's health poll does."""

    outcome: asyncio.Future[ColdStart]

    async def __call__(self, replica: Replica) -> ColdStart:
        process = replica.process
        assert isinstance(process, FakeProcess)
        exited = asyncio.ensure_future(process.wait())
        either: set[asyncio.Future[Any]] = {self.outcome, exited}
        try:
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if self.outcome in done:
            return self.outcome.result()
        raise ModelNotReady(
            f"a replica of {replica.model!r} exited with {process.returncode} while starting"
        )


@dataclass
class FakeLauncher:
    """A FAKE launcher: records every replica it starts (``started``, with its tier) and
    leaves it STARTING until the test calls ``ready``, ``fail_load`` or ``die``. With
    ``broken`` set, starting raises it (a spawner that cannot start anything)."""

    started: list[Replica] = field(default_factory=list)
    specs: list[ModelSpec] = field(default_factory=list)  # each one's spec, as launched
    broken: Exception | None = None
    liveness: FakeLiveness | None = None
    opened: bool = False
    closed: bool = False

    async def start(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def __call__(self, spec: ModelSpec, tier: Tier | None = None) -> Replica:
        if self.broken is not None:
            raise self.broken
        n = len(self.started)
        outcome: asyncio.Future[ColdStart] = asyncio.get_running_loop().create_future()
        replica = Replica(
            model=spec.name,
            port=20000 + n,
            process=FakeProcess(pid=100 + n),
            started=0.0,
            tier=tier,
            readiness=FakeReadiness(outcome),
            liveness=self.liveness,
        )
        self.started.append(replica)
        self.specs.append(spec)
        return replica

    def _outcome(self, i: int) -> asyncio.Future[ColdStart]:
        readiness = self.started[i].readiness
        assert isinstance(readiness, FakeReadiness)
        return readiness.outcome

    def ready(self, i: int, load_s: float = 0.25) -> None:
        self._outcome(i).set_result(
            ColdStart(phases={"spawn": 0.01, "load": load_s, "warmup": 0.0}, finished_at=0.0)
        )

    def fail_load(self, i: int, error: str) -> None:
        """The worker is up but reports that the model failed to load."""
        name = self.started[i].model
        self._outcome(i).set_exception(ModelNotReady(f"model {name!r} failed to load: {error}"))

    def die(self, i: int, code: int = 3) -> None:
        process = self.started[i].process
        assert isinstance(process, FakeProcess)
        process.exit(code)


async def settle(rounds: int = 50) -> None:
    """Let every task that can run, run (the fakes resolve at once): event-loop turns,
    not time."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def idle_until_zero(pool: ModelPool, clock: FakeClock, idle_for: float) -> None:
    """From now, a second at a time: ``pool`` keeps its one ready replica while idle
    for less than ``idle_for`` seconds, and is at zero once it has been idle that long."""
    last = clock.now
    for t in range(1, int(idle_for)):
        clock.now = last + t
        pool.autoscale(clock.now)
        await settle()
        assert pool.status().ready == 1, f"scaled to zero {t} s after the last request"
    clock.now = last + idle_for
    pool.autoscale(clock.now)
    await settle()
    assert pool.status().ready == 0


@dataclass
class FakeLiveness:
    """A FAKE liveness probe: every replica lives unless its URL is in ``frozen``;
    ``probes`` counts the calls."""

    frozen: set[str] = field(default_factory=set)
    probes: int = 0

    async def __call__(self, url: str, limit_s: float) -> bool:
        self.probes += 1
        await asyncio.sleep(0)
        return url not in self.frozen
