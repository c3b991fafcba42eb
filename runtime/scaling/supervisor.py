"""The local supervisor: Knative's activator and autoscaler for one machine.

Each model has a ``ModelPool``: its replicas (worker processes) and a bounded queue of
requests waiting for capacity. A request takes a slot on the least-loaded ready replica
with room under ``container-concurrency``; when there is none it waits in the queue (up
to its deadline) while the pool starts a replica. Queue full: ``Overloaded`` (503 with
Retry-After); deadline passed: ``DeadlineExceeded`` (504).

An autoscaling loop feeds each pool's observed concurrency (in flight + queued) to
``runtime.scaling.kpa.decide`` and applies the decision: new replicas are started, and
surplus ones are drained first (they take no new request, the ones in flight finish)
and only then stopped, so no request is lost to a scale-down. A replica whose process
dies is dropped at once; its requests in flight fail at the proxy, and the next request
starts a replacement.

Where the manager has placed a model (a :class:`Placement`), replicas start on its
primary tier and requests prefer them. A placement with a bridge tier starts a bridge
replica too when a request finds no primary ready (a cold start), serves from whichever
is ready first, and drains the bridge once a primary replica is ready. A new placement
(a move) starts the new primary replicas first and keeps the old ones serving until as
many new ones are ready, then drains the old ones: no request fails because of a move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.errors import DeadlineExceeded, ModelNotFound, ModelNotReady, Overloaded
from runtime.scaling.kpa import (
    ConcurrencyWindow,
    ScaleDecision,
    ScalerState,
    decide,
    initial_replicas,
)
from runtime.scaling.replica import ColdStart, Replica, ReplicaState, Spawner, spawn_worker
from runtime.spec.model import ModelConfig, ModelSpec
from runtime.spec.placement import Placement, Tier, TierRole

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
    bridge_served: int = 0
    moves: int = 0


def same_tier(a: Tier | None, b: Tier | None) -> bool:
    """The same replica set: runtime, device and cluster (role and warm minimum aside)."""
    if a is None or b is None:
        return a is b
    return (a.runtime, a.device, a.cluster) == (b.runtime, b.device, b.cluster)


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
        self.decision: ScaleDecision | None = None
        self.cold_starts = 0
        self.last_cold_start: ColdStart | None = None
        self.start_error: str | None = None
        self._spawning = 0
        self._bridging = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.placement: Placement | None = None
        self.bridge_served = 0
        self.moves = 0
        self._replace = 0  # new primary replicas to be ready before the old ones go
        if spec.endpoint is not None:
            self.replicas.append(Replica.external(spec.name, spec.endpoint, clock()))

    # -- requests -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Requests one replica takes at once (container-concurrency; 0 = unlimited)."""
        return self.spec.scaling.container_concurrency or 1_000_000

    def _primary(self, r: Replica) -> bool:
        return self.placement is None or same_tier(r.tier, self.placement.primary)

    def _pick(self) -> Replica | None:
        """The least busy ready primary replica with room; else the least busy other
        one (a bridge, or the old tier during a move)."""
        best: Replica | None = None
        other: Replica | None = None
        capacity = self.capacity
        for r in self.replicas:
            if r.state is ReplicaState.READY and r.in_flight < capacity and r.alive:
                if self._primary(r):
                    if best is None or r.in_flight < best.in_flight:
                        best = r
                elif other is None or r.in_flight < other.in_flight:
                    other = r
        return best or other

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
        self._bridge_cold_start()
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
        if (
            replica.tier is not None
            and replica.tier.role is TierRole.BRIDGE
            and not self._primary(replica)  # a bridge of the tier moved to serves as primary
        ):
            self.bridge_served += 1
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
        """Primary-tier replicas in these states (the ones the autoscaler scales);
        processes being spawned count as STARTING."""
        pending = self._spawning if ReplicaState.STARTING in states else 0
        return pending + sum(1 for r in self.replicas if r.state in states and self._primary(r))

    def _others(self, tier: Tier | None = None) -> list[Replica]:
        """Starting or ready replicas off the primary tier (of ``tier`` if given)."""
        live = (ReplicaState.STARTING, ReplicaState.READY)
        return [
            r
            for r in self.replicas
            if r.state in live
            and not self._primary(r)
            and (tier is None or same_tier(r.tier, tier))
        ]

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

    def scale_up(self, n: int, tier: Tier | None = None) -> None:
        """Start ``n`` replicas of the primary tier (or of ``tier``, a bridge)."""
        if self.external:
            return
        if tier is None:
            self._spawning += n  # counted at once, so the next request does not start more
            tier = self.placement.primary if self.placement else None
        else:
            self._bridging += n
        for _ in range(n):
            task = asyncio.create_task(self._start_one(tier))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _bridge_cold_start(self) -> None:
        """A request waits and no primary replica is ready: start a bridge replica
        too (if the placement has one and none is up), to serve until a primary is."""
        if self.placement is None or not self.placement.bridges or self.count(ReplicaState.READY):
            return
        bridge = self.placement.bridges[0]
        if not self._others(bridge) and not self._bridging:
            self.scale_up(1, bridge)

    def set_placement(self, placement: Placement) -> None:
        """Move to a new placement: start the new primary replicas first (as many as
        serve now), keep the old ones serving until they are ready, then drain them."""
        old = self.placement
        self.placement = placement
        if old is not None and same_tier(old.primary, placement.primary):
            self._retire_others()
            self._keep_warm(self._clock())
            return
        self.moves += 1
        self.start_error = None  # a new tier, a new chance
        serving = [r for r in self._others() if r.tier is None or r.tier.role is TierRole.PRIMARY]
        self._replace = len(serving)
        if serving:
            self.scale_up(len(serving))
        else:
            self._retire_others()
        self._keep_warm(self._clock())

    def _retire_others(self) -> None:
        """Drain off-primary replicas once enough primary ones are ready; a warm bridge
        keeps its minimum."""
        if self.count(ReplicaState.READY) < max(1, self._replace) and self._replace:
            return
        self._replace = 0
        if self.placement is None:
            return
        keep: dict[int, int] = {}
        for i, b in enumerate(self.placement.bridges):
            keep[i] = b.min_scale or 0
        for r in sorted(self._others(), key=lambda r: r.in_flight):
            slot = next(
                (i for i, b in enumerate(self.placement.bridges) if same_tier(r.tier, b)), None
            )
            if slot is not None and keep[slot] > 0:
                keep[slot] -= 1
                continue
            r.state = ReplicaState.DRAINING  # at once: a second call must not drain it again
            self._spawn_task(self._drain(r))

    def _keep_warm(self, now: float) -> None:
        """Warm bridges: start those below their minimum."""
        if self.placement is None or self.external:
            return
        for bridge in self.placement.bridges:
            missing = (bridge.min_scale or 0) - len(self._others(bridge)) - self._bridging
            if missing > 0:
                self.scale_up(missing, bridge)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, tier: Tier | None = None) -> None:
        primary = tier is None or tier.role is TierRole.PRIMARY
        try:
            replica = await spawn_worker(self._spawner, self.spec, self._clock, tier)
        except Exception as exc:  # the spawner itself failed (no python, no port...)
            self._spawning -= primary
            self._bridging -= not primary
            self.start_error = f"cannot start a replica: {exc}"
            self._fail_waiters(ModelNotReady(f"model {self.spec.name!r}: {self.start_error}"))
            return
        self._spawning -= primary
        self._bridging -= not primary
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
            if not self.count(ReplicaState.STARTING, ReplicaState.READY) and not self._others():
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
        if self.count(ReplicaState.READY):
            self._retire_others()  # a primary is ready: bridges and the old tier go
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
            (
                r
                for r in self.replicas
                if r.state in (ReplicaState.STARTING, ReplicaState.READY) and self._primary(r)
            ),
            key=lambda r: (r.state is ReplicaState.READY, r.in_flight),
        )
        for replica in candidates[:n]:
            self._spawn_task(self._drain(replica))

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
        rule = self.spec.scaling
        warm = self.placement.primary.min_scale if self.placement else None
        if warm and warm > rule.min_scale:
            rule = rule.model_copy(update={"min_scale": warm})
        self._keep_warm(now)
        if self.count(ReplicaState.READY):
            self._retire_others()
        decision = decide(
            self.window.stats(now, rule),
            self.count(ReplicaState.READY),
            self.scaler,
            rule,
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
            bridge_served=self.bridge_served,
            moves=self.moves,
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
        self.placements: dict[str, Placement] = {}  # the manager's, set before start()
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
            pool.placement = self.placements.get(spec.name)
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
