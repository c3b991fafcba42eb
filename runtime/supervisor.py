"""The local supervisor: Knative's activator and autoscaler for one machine.

Each model has a ``ModelPool``: its replicas (worker processes) and a bounded queue of
requests waiting for capacity. A request takes a slot on the least-loaded ready replica
with room under ``container-concurrency``; when there is none it waits in the queue (up
to its deadline) while the pool starts a replica. Queue full: ``Overloaded`` (503 with
Retry-After); deadline passed: ``DeadlineExceeded`` (504).

An autoscaling loop feeds each pool's observed concurrency (in flight + queued) to
``runtime.autoscaler.decide`` and applies the decision: new replicas are started, and
surplus ones are drained first (they take no new request, the ones in flight finish)
and only then stopped, so no request is lost to a scale-down. A replica whose process
dies is dropped at once; its requests in flight fail at the proxy, and the next request
starts a replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from runtime.autoscaler import ConcurrencyWindow, Decision, ScalerState, decide, initial_replicas
from runtime.errors import DeadlineExceeded, ModelNotFound, ModelNotReady, Overloaded
from runtime.replica import ColdStart, Replica, ReplicaState, Spawner, spawn_worker
from runtime.spec import ModelConfig, ModelSpec

__all__ = ["ModelPool", "PoolStatus", "Supervisor"]

log = logging.getLogger("edgeinfer.supervisor")


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of one model's pool, for /admin/models and metrics."""

    model: str
    ready: int
    starting: int
    draining: int
    in_flight: int
    queued: int
    desired: int
    panic: bool
    reason: str
    cold_starts: int
    last_cold_start: ColdStart | None


class ModelPool:
    """Replicas and waiting requests of one model."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        spawner: Spawner,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        max_queue: int,
        ready_timeout: float,
        scale_to_zero_grace: float = 30.0,
        on_cold_start: Callable[[str, ColdStart], None] | None = None,
    ) -> None:
        self.spec = spec
        self.scale_to_zero_grace = scale_to_zero_grace
        self._on_cold_start = on_cold_start
        self.replicas: list[Replica] = []
        self._waiters: deque[asyncio.Future[Replica]] = deque()
        self._spawner = spawner
        self._session = session
        self._clock = clock
        self.max_queue = max_queue
        self.ready_timeout = ready_timeout
        self.window = ConcurrencyWindow(horizon=spec.scaling.window)
        self.scaler = ScalerState.start(spec.scaling, clock())
        self.decision: Decision | None = None
        self.cold_starts = 0
        self.last_cold_start: ColdStart | None = None
        self.start_error: str | None = None
        self._spawning = 0
        self._tasks: set[asyncio.Task[None]] = set()
        if spec.endpoint is not None:
            self.replicas.append(Replica.external(spec.name, spec.endpoint, clock()))

    # -- requests -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Requests one replica takes at once (container-concurrency; 0 = unlimited)."""
        return self.spec.scaling.container_concurrency or 1_000_000

    def _pick(self) -> Replica | None:
        best: Replica | None = None
        capacity = self.capacity
        for r in self.replicas:
            if (
                r.state is ReplicaState.READY
                and r.in_flight < capacity
                and (best is None or r.in_flight < best.in_flight)
                and r.alive
            ):
                best = r
        return best

    def _observe(self) -> None:
        in_flight = sum(r.in_flight for r in self.replicas)
        self.window.record(self._clock(), in_flight + len(self._waiters))

    def try_acquire(self) -> Replica | None:
        """A slot on a ready replica now, or None (then ``acquire`` waits for one)."""
        if self._waiters:
            return None  # first come, first served
        replica = self._pick()
        if replica is not None:
            replica.begin()
            self._observe()
        return replica

    async def acquire(self, deadline: float) -> Replica:
        """A ready replica with a slot taken for the caller; ``release`` gives it back."""
        replica = self.try_acquire()
        if replica is not None:
            return replica
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"model {self.spec.name!r} has {len(self._waiters)} requests waiting already; "
                "retry later",
                retry_after=1.0,
            )
        waiter: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._observe()
        self._scale_for_waiters()
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, deadline - self._clock()))
        except BaseException:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise DeadlineExceeded(
                f"no replica of model {self.spec.name!r} was free before the request's "
                f"deadline" + (f" ({self.start_error})" if self.start_error else "")
            )
        return waiter.result()

    def _abandon(self, waiter: asyncio.Future[Replica]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release(waiter.result())  # it was handed a replica just as it gave up
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._observe()

    def release(self, replica: Replica) -> None:
        replica.end()
        self._dispatch()
        self._observe()

    def _dispatch(self) -> None:
        while self._waiters:
            replica = self._pick()
            if replica is None:
                return
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            replica.begin()
            waiter.set_result(replica)

    def _fail_waiters(self, error: Exception) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    # -- replicas -------------------------------------------------------------------

    def count(self, *states: ReplicaState) -> int:
        """Replicas in these states; processes being spawned count as STARTING."""
        pending = self._spawning if ReplicaState.STARTING in states else 0
        return pending + sum(1 for r in self.replicas if r.state in states)

    def _scale_for_waiters(self) -> None:
        """A request that cannot be placed starts a replica now (the activator's poke)
        rather than at the next autoscaler tick, within max-scale."""
        starting = self.count(ReplicaState.STARTING)
        active = self.count(ReplicaState.STARTING, ReplicaState.READY)
        limit = self.spec.scaling.max_scale or 1_000_000
        needed = -(-len(self._waiters) // self.capacity)  # ceil
        if starting < needed and active < limit:
            self.scale_up(min(needed - starting, limit - active))

    @property
    def external(self) -> bool:
        return self.spec.endpoint is not None

    def scale_up(self, n: int) -> None:
        if self.external:
            return
        self._spawning += n  # counted at once, so the next request does not start more
        for _ in range(n):
            task = asyncio.create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            replica = await spawn_worker(self._spawner, self.spec, self._clock)
        except Exception as exc:  # the spawner itself failed (no python, no port...)
            self._spawning -= 1
            self.start_error = f"cannot start a replica: {exc}"
            self._fail_waiters(ModelNotReady(f"model {self.spec.name!r}: {self.start_error}"))
            return
        self._spawning -= 1
        self.replicas.append(replica)
        watcher = asyncio.create_task(self._watch(replica))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        try:
            cold = await replica.wait_ready(self._session, self._clock, self.ready_timeout)
        except ModelNotReady as exc:
            self.start_error = exc.message
            log.error("%s", exc.message)
            await replica.stop(grace=5)
            self._forget(replica)
            if not self.count(ReplicaState.STARTING, ReplicaState.READY):
                self._fail_waiters(exc)
            return
        if replica.state is not ReplicaState.STARTING:
            return  # stopped while it started
        replica.state = ReplicaState.READY
        replica.cold_start = cold
        self.start_error = None
        self.cold_starts += 1
        self.last_cold_start = cold
        if self._on_cold_start is not None:
            self._on_cold_start(self.spec.name, cold)
        log.info(
            "replica of %s ready on :%d, cold start %.0f ms (%s)",
            self.spec.name,
            replica.port,
            cold.total * 1000,
            ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cold.phases.items()),
        )
        self._dispatch()

    async def _watch(self, replica: Replica) -> None:
        code = await replica.process.wait()
        if replica.state is not ReplicaState.STOPPED:
            log.warning("replica of %s on :%d died (exit %s)", self.spec.name, replica.port, code)
            replica.state = ReplicaState.STOPPED
            self._forget(replica)
            if self._waiters:
                self._scale_for_waiters()

    def _forget(self, replica: Replica) -> None:
        with contextlib.suppress(ValueError):
            self.replicas.remove(replica)

    def scale_down(self, n: int) -> None:
        """Drain ``n`` replicas (starting ones first, then the least busy ready ones)."""
        if self.external:
            return
        candidates = sorted(
            (r for r in self.replicas if r.state in (ReplicaState.STARTING, ReplicaState.READY)),
            key=lambda r: (r.state is ReplicaState.READY, r.in_flight),
        )
        for replica in candidates[:n]:
            task = asyncio.create_task(self._drain(replica))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, replica: Replica) -> None:
        replica.state = ReplicaState.DRAINING
        if replica.in_flight:
            await replica.idle.wait()
        await replica.stop(grace=self.spec.scaling.timeout)
        self._forget(replica)
        log.info("replica of %s on :%d stopped", self.spec.name, replica.port)

    def autoscale(self, now: float) -> None:
        """One autoscaler step: decide on the observed concurrency, then act."""
        if self.external:
            return
        self._observe()
        active = self.count(ReplicaState.STARTING, ReplicaState.READY)
        self.window.tick(now)
        # Knative decides on the replicas that serve; starting ones count when acting.
        decision = decide(
            self.window.stats(now, self.spec.scaling),
            self.count(ReplicaState.READY),
            self.scaler,
            self.spec.scaling,
            now,
            scale_to_zero_grace=self.scale_to_zero_grace,
        )
        self.scaler = decision.state
        self.decision = decision
        if decision.desired > active:
            self.scale_up(decision.desired - active)
        elif decision.desired < active:
            self.scale_down(active - decision.desired)

    def status(self) -> PoolStatus:
        d = self.decision
        return PoolStatus(
            model=self.spec.name,
            ready=self.count(ReplicaState.READY),
            starting=self.count(ReplicaState.STARTING),
            draining=self.count(ReplicaState.DRAINING),
            in_flight=sum(r.in_flight for r in self.replicas),
            queued=len(self._waiters),
            desired=d.desired if d else self.count(ReplicaState.STARTING, ReplicaState.READY),
            panic=d.panic if d else False,
            reason=d.reason if d else "no decision yet",
            cold_starts=self.cold_starts,
            last_cold_start=self.last_cold_start,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._fail_waiters(ModelNotReady(f"model {self.spec.name!r} is shutting down"))
        await asyncio.gather(*(r.stop(grace=10) for r in self.replicas), return_exceptions=True)
        self.replicas.clear()


class Supervisor:
    """All models' pools and the loop that scales them."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        spawner: Spawner,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
        max_queue: int = 100,
        ready_timeout: float = 300.0,
        scale_to_zero_grace: float = 30.0,
    ) -> None:
        self.config = config
        self.scale_to_zero_grace = scale_to_zero_grace
        self.on_cold_start: Callable[[str, ColdStart], None] | None = None
        self._spawner = spawner
        self._clock = clock
        self.tick = tick
        self.max_queue = max_queue
        self.ready_timeout = ready_timeout
        self.pools: dict[str, ModelPool] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawner.start()
        self._session = aiohttp.ClientSession()
        for spec in self.config.models:
            pool = ModelPool(
                spec,
                spawner=self._spawner,
                session=self._session,
                clock=self._clock,
                max_queue=self.max_queue,
                ready_timeout=self.ready_timeout,
                scale_to_zero_grace=self.scale_to_zero_grace,
                on_cold_start=self.on_cold_start,
            )
            self.pools[spec.name] = pool
            if spec.endpoint is None:
                pool.scale_up(initial_replicas(spec.scaling))
        self._loop_task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = self._clock()
            for pool in self.pools.values():
                try:
                    pool.autoscale(now)
                except Exception:  # one model's bad step must not stop the others
                    log.exception("autoscaling %s failed", pool.spec.name)

    def pool(self, model: str) -> ModelPool:
        pool = self.pools.get(model)
        if pool is None:
            names = ", ".join(sorted(self.pools))
            raise ModelNotFound(f"model {model!r} does not exist; models here: {names}")
        return pool

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await asyncio.gather(*(p.close() for p in self.pools.values()))
        await self._spawner.close()
        if self._session is not None:
            await self._session.close()
