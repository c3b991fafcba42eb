"""The local supervisor: Knative's activator and autoscaler for one machine.

Each model has a :class:`~runtime.scaling.pool.ModelPool` (its replicas and its queue
of waiting requests); the supervisor creates them when it starts, with the manager's
placements, and runs the loop that has each pool take one autoscaler step per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from runtime.errors import ModelNotFound
from runtime.scaling.cores import CoreBudget
from runtime.scaling.health import HealthConfig
from runtime.scaling.kpa import initial_replicas
from runtime.scaling.pool import ModelPool, PoolStatus
from runtime.scaling.replica import ColdStart, Launcher
from runtime.spec.model import ModelConfig
from runtime.spec.placement import Placement

__all__ = ["ModelPool", "PoolStatus", "Supervisor"]

log = logging.getLogger("edgeinfer.supervisor")


class Supervisor:
    """All models' pools and the loop that scales them.

    ``launcher`` starts replicas (:class:`WorkerLauncher` for worker processes, a fake
    one in tests); ``clock`` is monotonic seconds; ``tick`` the seconds between two
    autoscaler steps; ``on_cold_start`` hears of every replica that became ready;
    ``cores`` the compute cores all replicas share (:class:`CoreBudget`; None: none)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        launcher: Launcher,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
        max_queue: int = 100,
        scale_to_zero_grace: float = 30.0,
        on_cold_start: Callable[[str, ColdStart], None] | None = None,
        health: HealthConfig | None = None,
        cores: int | None = None,
    ) -> None:
        self.config = config
        # The cores replicas may use between them (runtime.scaling.cores); None: no budget.
        self.cores = CoreBudget(cores, clock=clock) if cores is not None else None
        self.launcher = launcher
        self.scale_to_zero_grace = scale_to_zero_grace
        # ReplicaSource's hook: the gateway's metrics still set it after construction.
        self.on_cold_start = on_cold_start
        self.health = health or HealthConfig()
        # Told of every failed start (model, why): the manager may re-plan the tier.
        self.on_crash_loop: Callable[[str, str], None] | None = None
        self._clock = clock
        self.tick = tick
        self.max_queue = max_queue
        self.pools: dict[str, ModelPool] = {}
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, placements: Mapping[str, Placement] | None = None) -> None:
        """Create every model's pool (on the manager's ``placements``, where given),
        start the initial replicas and the autoscaling loop."""
        await self.launcher.start()
        for spec in self.config.models:
            pool = ModelPool(
                spec,
                launcher=self.launcher,
                clock=self._clock,
                max_queue=self.max_queue,
                scale_to_zero_grace=self.scale_to_zero_grace,
                placement=(placements or {}).get(spec.name),
                on_cold_start=self.on_cold_start,
                health=self.health,
                on_crash_loop=self._crash_loop,
                cores=self.cores,
            )
            if self.cores is not None:
                self.cores.track(pool)
            self.pools[spec.name] = pool
            if spec.endpoint is None:
                pool.scale_up(initial_replicas(spec.scaling))
        self._loop_task = asyncio.create_task(self._run())

    def _crash_loop(self, model: str, error: str) -> None:
        if self.on_crash_loop is not None:
            self.on_crash_loop(model, error)

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
        await self.launcher.close()
