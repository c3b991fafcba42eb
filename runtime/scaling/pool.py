"""One model's pool: its replicas, its queue of waiting requests, and how it scales.

A request takes a slot on the least-loaded ready replica with room under
``container-concurrency``; when there is none it waits in the model's
:class:`~runtime.scaling.queue.RequestQueue` (up to its deadline) while the pool starts
a replica. Replicas come from an injected :class:`~runtime.scaling.replica.Launcher`
and say themselves when they serve (``await replica.ready()``), so a fake launcher
stands in for worker processes in tests.

Each autoscaler step feeds the observed concurrency (in flight + queued) to
``runtime.scaling.kpa.decide`` and applies the decision: new replicas are started, and
surplus ones are drained first (they take no new request, the ones in flight finish)
and only then stopped, so no request is lost to a scale-down. A replica whose process
dies is dropped at once; its requests in flight fail at the proxy, and the next request
starts a replacement.

Where the manager has placed the model (a :class:`Placement`), replicas start on its
primary tier and requests prefer them. A placement with a bridge tier starts a bridge
replica too when a request finds no primary ready (a cold start), serves from whichever
is ready first, and drains the bridge once a primary replica is ready. A new placement
(a move) starts the new primary replicas first and keeps the old ones serving until as
many new ones are ready, then drains the old ones (:func:`~runtime.scaling.tiers.tier_moves`
decides which): no request fails because of a move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from runtime.errors import ModelNotReady
from runtime.scaling.cores import CoreBudget
from runtime.scaling.health import HealthConfig, backoff_seconds, watch
from runtime.scaling.keep_alive import keep_alive_rule
from runtime.scaling.kpa import UNBOUNDED, ConcurrencyWindow, ScaleDecision, ScalerState, decide
from runtime.scaling.queue import STANDARD, RequestQueue, Ticket
from runtime.scaling.replica import ColdStart, Launcher, Replica, ReplicaState
from runtime.scaling.service_time import ServiceTime
from runtime.scaling.tiers import is_primary, same_tier, tier_moves
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Placement, Tier, TierRole

__all__ = ["ModelPool", "PoolStatus"]

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
    failed_starts: int = 0  # failed starts (or deaths soon after) in a row
    backoff_seconds: float = 0.0  # until the next start may begin (crash-loop back-off)
    last_error: str | None = None  # why the last start failed, or the last replica left
    unhealthy: int = 0  # replicas taken out of rotation by the health checks
    cores: str = ""  # why a scale-up waits for cores (runtime.scaling.cores); "" if none


class ModelPool:
    """Replicas and waiting requests of one model.

    ``launcher`` starts replicas; ``clock`` is monotonic seconds (deadlines and the
    autoscaler's ``now`` are in it); ``placement`` is the manager's first placement
    (None: the worker chooses its runtime); ``on_cold_start`` hears of every replica
    that became ready."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        launcher: Launcher,
        clock: Callable[[], float],
        max_queue: int,
        scale_to_zero_grace: float = 30.0,
        placement: Placement | None = None,
        on_cold_start: Callable[[str, ColdStart], None] | None = None,
        health: HealthConfig | None = None,
        on_crash_loop: Callable[[str, str], None] | None = None,
        cores: CoreBudget | None = None,
    ) -> None:
        self.spec = spec
        self.health = health or HealthConfig()
        self._on_crash_loop = on_crash_loop
        self.failed_starts = 0
        self.backoff_until = 0.0  # clock time before which no replica starts
        self.unhealthy = 0
        self.last_error: str | None = None
        self.cores = cores  # None: no budget, every scale-up starts at once
        self.cores_reason = ""
        self.scale_to_zero_grace = scale_to_zero_grace
        self.placement = placement
        self._on_cold_start = on_cold_start
        self._launcher = launcher
        self._clock = clock
        self.replicas: list[Replica] = []
        self.queue: RequestQueue[Replica] = RequestQueue(spec.name, max_queue, clock)
        self.service = ServiceTime()  # measured in release
        self.window = ConcurrencyWindow(horizon=spec.scaling.window)
        self.scaler = ScalerState.start(spec.scaling, clock())
        self.decision: ScaleDecision | None = None
        self.cold_starts = 0
        self.last_cold_start: ColdStart | None = None
        self.start_error: str | None = None
        self.bridge_served = 0
        self.hold_until = 0.0  # clock time until which at least one replica stays (hold)
        self.moves = 0
        self._spawning = 0
        self._bridging = 0
        self._replace = 0  # new primary replicas to be ready before the old ones go
        self._tasks: set[asyncio.Task[None]] = set()
        if spec.endpoint is not None:
            self.replicas.append(Replica.external(spec.name, spec.endpoint, clock()))

    @property
    def max_queue(self) -> int:
        return self.queue.max_queue

    @property
    def external(self) -> bool:
        return self.spec.endpoint is not None

    # -- requests -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Requests one replica takes at once (container-concurrency; 0 = unlimited)."""
        return self.spec.scaling.container_concurrency or UNBOUNDED

    def _primary(self, r: Replica) -> bool:
        return is_primary(self.placement, r)

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

    def _take(self) -> Replica | None:
        replica = self._pick()
        if replica is not None:
            replica.begin()
        return replica

    def _observe(self) -> None:
        in_flight = sum(r.in_flight for r in self.replicas)
        self.window.record(self._clock(), in_flight + len(self.queue))

    def try_acquire(self, ticket: Ticket = STANDARD) -> Replica | None:
        """A slot on a ready replica now, or None (then ``acquire`` waits for one)."""
        if self.queue.goes_first(ticket):
            return None  # its class and the ones above go first come, first served
        if ticket.leave_free and self._free_slots() <= ticket.leave_free:
            return None
        replica = self._take()
        if replica is not None:
            self._observe()
        return replica

    def _ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state is ReplicaState.READY and r.alive]

    def _free_slots(self) -> int:
        return sum(max(0, self.capacity - r.in_flight) for r in self._ready())

    def saturated(self, ticket: Ticket) -> bool:
        """Whether no ready replica has a slot ``ticket`` may take (more free than it
        leaves free) while one is ready: then ``acquire`` refuses a sheddable ticket
        at once (a cold start is no saturation)."""
        return bool(self._ready()) and self._free_slots() <= ticket.leave_free

    async def acquire(self, deadline: float, *, ticket: Ticket = STANDARD) -> Replica:
        """A ready replica with a slot taken for the caller; ``release`` gives it back.
        A saturated model refuses a sheddable ticket at once (429); a deadline the
        queue ahead and the measured service time cannot meet is refused at once (504)."""
        replica = self.try_acquire(ticket)
        if replica is not None:
            return replica
        self._refuse_in_backoff(deadline)
        self.queue.admit(
            ticket,
            slots=len(self._ready()) * self.capacity,
            service=self.service.seconds,
            left=deadline - self._clock(),
        )
        waiter = self.queue.join(ticket)
        self._observe()
        self._scale_for_waiters()
        self._bridge_cold_start()
        try:
            return await self.queue.wait(waiter, deadline, self.release, lambda: self.start_error)
        except BaseException:
            self._observe()  # it left the queue
            raise

    def release(self, replica: Replica, *, seconds: float | None = None) -> None:
        """Give the slot back; ``seconds``: how long the request held it (measured)."""
        if seconds is not None:
            self.service.record(seconds)
        if (
            replica.tier is not None
            and replica.tier.role is TierRole.BRIDGE
            and not self._primary(replica)  # a bridge of the tier moved to serves as primary
        ):
            self.bridge_served += 1
        replica.end()
        self.queue.dispatch(self._take)
        self._observe()

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
        limit = self.spec.scaling.max_scale or UNBOUNDED
        needed = -(-len(self.queue) // self.capacity)  # ceil
        if starting < needed and active < limit:
            self.scale_up(min(needed - starting, limit - active))

    def scale_up(self, n: int, tier: Tier | None = None) -> None:
        """Start ``n`` replicas of the primary tier (or of ``tier``, a bridge)."""
        if self.external:
            return
        if tier is None and self.cores is not None:
            n, self.cores_reason = self.cores.admit(self, n)
            if n <= 0:
                return
        if tier is None:
            self._spawning += n  # counted at once, so the next request does not start more
            tier = self.placement.primary if self.placement else None
        else:
            self._bridging += n
        for _ in range(n):
            self._spawn_task(self._start_one(tier))

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
        if old is None or not same_tier(old.primary, placement.primary):
            self.moves += 1
            self.start_error = None  # a new tier, a new chance
            serving = [
                r for r in self._others() if r.tier is None or r.tier.role is TierRole.PRIMARY
            ]
            self._replace = len(serving)
            if serving:
                self.scale_up(len(serving))
        self._apply_tiers(hold=self._replace)

    def _apply_tiers(self, hold: int) -> None:
        """Drain the off-primary replicas and start the warm bridges the placement
        wants (:func:`tier_moves`), once ``hold`` primaries are ready."""
        moves = tier_moves(self.placement, self.replicas, hold=hold, bridging=self._bridging)
        if moves.settled:
            self._replace = 0
        for r in moves.drain:
            r.state = ReplicaState.DRAINING  # at once: a second call must not drain it again
            self._spawn_task(self._drain(r))
        for tier, n in moves.start:
            self.scale_up(n, tier)

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, tier: Tier | None = None) -> None:
        primary = tier is None or tier.role is TierRole.PRIMARY
        try:
            delay = self.backoff_until - self._clock()
            if delay > 0:  # a crash loop: the next start waits its back-off
                await asyncio.sleep(delay)
            # The core budget may narrow a primary replica's threads (options.threads).
            spec = self.cores.launch_spec(self) if self.cores is not None and primary else self.spec
            replica = await self._launcher(spec, tier)
        except Exception as exc:  # the launcher itself failed (no python, no port...)
            self._spawning -= primary
            self._bridging -= not primary
            self.start_error = f"cannot start a replica: {exc}"
            self._start_failed(self.start_error)
            self.queue.fail_all(ModelNotReady(f"model {self.spec.name!r}: {self.start_error}"))
            return
        self._spawning -= primary
        self._bridging -= not primary
        self.replicas.append(replica)
        self._spawn_task(self._watch(replica))
        try:
            cold = await replica.ready()
        except ModelNotReady as exc:
            self.start_error = exc.message
            log.error("%s", exc.message)
            self._start_failed(exc.message)
            await replica.stop(grace=5)
            self._forget(replica)
            if not self.count(ReplicaState.STARTING, ReplicaState.READY) and not self._others():
                self.queue.fail_all(exc)
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
        if replica.liveness is not None:
            self._spawn_task(self._health(replica))
        log.info(
            "replica of %s ready on :%d, cold start %.0f ms (%s)",
            self.spec.name,
            replica.port,
            cold.total * 1000,
            ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cold.phases.items()),
        )
        if self.count(ReplicaState.READY):
            self._apply_tiers(hold=max(1, self._replace))  # bridges and the old tier go
        self.queue.dispatch(self._take)

    async def _watch(self, replica: Replica) -> None:
        code = await replica.process.wait()
        if replica.state is not ReplicaState.STOPPED:
            log.warning("replica of %s on :%d died (exit %s)", self.spec.name, replica.port, code)
            was_ready = replica.state is ReplicaState.READY
            replica.state = ReplicaState.STOPPED
            self._forget(replica)
            if (
                was_ready
                and not replica.served  # it never finished a request: it crashed at start
                and self._clock() - replica.started < self.health.crash_window_seconds
            ):
                self._start_failed(f"a replica exited with {code} soon after it started")
            if len(self.queue):
                self._scale_for_waiters()

    # -- health (runtime.scaling.health) --------------------------------------------

    async def _health(self, replica: Replica) -> None:
        assert replica.liveness is not None
        health = self.health
        if health.progress_timeout_seconds is None:
            update = {"progress_timeout_seconds": self.spec.scaling.timeout}
            health = health.model_copy(update=update)
        await watch(
            replica,
            health,
            replica.liveness,
            lambda: replica.state in (ReplicaState.READY, ReplicaState.DRAINING),
            lambda reason: self.take_out(replica, reason),
        )

    def take_out(self, replica: Replica, reason: str) -> None:
        """``replica`` is unhealthy (no liveness, no progress) or unreachable: out of
        rotation at once, killed (SIGKILL: a frozen process handles no SIGTERM) and
        replaced. Its requests in flight fail at the proxy; waiting ones (never sent)
        stay in the queue for another replica."""
        if replica.state is ReplicaState.STOPPED or replica.base_url is not None:
            return  # gone already, or an external server (not ours to kill)
        was_ready = replica.state is ReplicaState.READY
        log.warning("replica of %s on :%d taken out: %s", self.spec.name, replica.port, reason)
        replica.state = ReplicaState.STOPPED
        self.unhealthy += 1
        self.last_error = f"a replica was taken out: {reason}"
        self._forget(replica)
        with contextlib.suppress(ProcessLookupError):
            replica.process.kill()
        if replica.in_flight == 0:
            replica.idle.set()  # a drain waiting on it must not wait for ever
        if len(self.queue):
            self._scale_for_waiters()
        elif was_ready and self._primary(replica):
            want = self.decision.desired if self.decision else 1
            active = self.count(ReplicaState.STARTING, ReplicaState.READY)
            if active < want:
                self.scale_up(want - active)

    # -- crash loops ----------------------------------------------------------------

    def _start_failed(self, error: str) -> None:
        """One more failed start in a row: the next start waits its back-off, and the
        manager hears of it (it may move the model to another tier)."""
        self.failed_starts += 1
        self.last_error = error
        delay = backoff_seconds(self.health, self.failed_starts)
        self.backoff_until = self._clock() + delay
        log.warning(
            "%s: start failed %d time(s) in a row; next start in %.1fs: %s",
            self.spec.name,
            self.failed_starts,
            delay,
            error,
        )
        if self._on_crash_loop is not None:
            self._on_crash_loop(self.spec.name, error)

    def _refuse_in_backoff(self, deadline: float) -> None:
        """A request for a model in a crash loop, with nothing serving and nothing
        starting, gets a 503 naming the cause at once instead of waiting it out, when
        waiting cannot help: the last start failed to load (the next one will, most
        likely), or the back-off outlasts the request's ``deadline``. After a replica
        that was ready died (a crash on a request, or a kill from outside: a fork
        server's child does not say which) the request waits for the next start."""
        if (
            self.failed_starts
            and self._clock() < self.backoff_until
            and (self.start_error is not None or deadline <= self.backoff_until)
            and not self.count(ReplicaState.STARTING, ReplicaState.READY)
            and not self._others()
        ):
            wait = self.backoff_until - self._clock()
            raise ModelNotReady(
                f"model {self.spec.name!r} failed to start {self.failed_starts} time(s) in a "
                f"row (next try in {wait:.0f}s): {self.last_error}"
            )

    def _settle_failures(self) -> None:
        """A replica that has served longer than the crash window ends a crash loop."""
        window = self.health.crash_window_seconds
        now = self._clock()
        if self.failed_starts and any(
            r.state is ReplicaState.READY and now - r.started >= window for r in self.replicas
        ):
            self.failed_starts = 0
            self.backoff_until = 0.0

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
            replica.state = ReplicaState.DRAINING  # at once: the core budget counts it
            self._spawn_task(self._drain(replica))

    async def _drain(self, replica: Replica) -> None:
        replica.state = ReplicaState.DRAINING
        if replica.in_flight:
            await replica.idle.wait()
        await replica.stop(grace=self.spec.scaling.timeout)
        self._forget(replica)
        log.info("replica of %s on :%d stopped", self.spec.name, replica.port)

    def hold(self, until: float) -> None:
        """Keep at least one replica until clock time ``until`` (Ollama's ``keep_alive``;
        the latest request's hold wins, as in Ollama)."""
        self.hold_until = until

    def autoscale(self, now: float) -> None:
        """One autoscaler step: decide on the observed concurrency, then act."""
        if self.external:
            return
        self._observe()
        self._settle_failures()
        active = self.count(ReplicaState.STARTING, ReplicaState.READY)
        self.window.tick(now)
        # Knative decides on the replicas that serve; starting ones count when acting.
        rule = self.spec.scaling
        warm = self.placement.primary.min_scale if self.placement else None
        if warm and warm > rule.min_scale:
            rule = rule.model_copy(update={"min_scale": warm})
        if now < self.hold_until and rule.min_scale < 1:
            rule = rule.model_copy(update={"min_scale": 1})
        keep = self.placement.primary.keep_alive_s if self.placement else None
        rule, grace = keep_alive_rule(rule, keep, self.scale_to_zero_grace)
        self._apply_tiers(hold=max(1, self._replace))
        decision = decide(
            self.window.stats(now, rule),
            self.count(ReplicaState.READY),
            self.scaler,
            rule,
            now,
            scale_to_zero_grace=grace,
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
            queued=len(self.queue),
            desired=d.desired if d else self.count(ReplicaState.STARTING, ReplicaState.READY),
            panic=d.panic if d else False,
            reason=d.reason if d else "no decision yet",
            cold_starts=self.cold_starts,
            last_cold_start=self.last_cold_start,
            bridge_served=self.bridge_served,
            moves=self.moves,
            failed_starts=self.failed_starts,
            backoff_seconds=round(max(0.0, self.backoff_until - self._clock()), 3),
            last_error=self.last_error,
            unhealthy=self.unhealthy,
            cores=self.cores_reason,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.queue.fail_all(ModelNotReady(f"model {self.spec.name!r} is shutting down"))
        await asyncio.gather(*(r.stop(grace=10) for r in self.replicas), return_exceptions=True)
        self.replicas.clear()
