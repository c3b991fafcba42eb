"""The models inside one WASM host process, and their lives there.

A model in the host is *resident* once loaded (its guest compiled or its snapshot
mapped, its weights in memory, its worker app built) and *active* while the
supervisor holds an in-host replica of it. Releasing it (the replica stopped: the
model scaled to zero) drops its idle instances and keeps it resident, so the next
activation creates instances and loads nothing. Resident models that are not active
are evicted, least recently used first, when the host's memory budget needs room
(:func:`pick_evictions`, pure). Each model has its own runtime, instance pool,
threads and sandbox (deadline, memory limit, read-only files per instance): one
model's trap or timeout is that model's answer alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from runtime.backends.registry import Runtime, create_runtime
from runtime.errors import BadInput, ModelNotFound, ModelNotReady
from runtime.settings import Settings
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.worker.app import create_app
from runtime.worker.state import WorkerState

__all__ = ["HostedModel", "HostedModels", "Resident", "pick_evictions"]

log = logging.getLogger("edgeinfer.wasm_host")


@dataclass(frozen=True)
class Resident:
    """What eviction weighs of one resident model."""

    name: str
    memory_bytes: int
    last_used: float
    busy: bool  # active (a replica holds it) or requests in flight


def pick_evictions(
    resident: Sequence[Resident], budget_bytes: int | None, keep: str | None = None
) -> list[str]:
    """The models to unload so that the resident memory fits ``budget_bytes``: idle
    ones, least recently used first, never ``keep`` nor a busy one. None: no budget.
    Where the idle ones do not free enough, all of them go and the host runs over."""
    if budget_bytes is None:
        return []
    total = sum(r.memory_bytes for r in resident)
    out: list[str] = []
    for r in sorted(resident, key=lambda r: r.last_used):
        if total <= budget_bytes:
            break
        if r.busy or r.name == keep:
            continue
        out.append(r.name)
        total -= r.memory_bytes
    return out


@dataclass
class HostedModel:
    spec: ModelSpec
    runtime: Runtime
    app: FastAPI
    loaded_at: float
    last_used: float
    active: bool = False
    in_flight: int = 0
    activations: int = 0
    load_phases: dict[str, float] = field(default_factory=dict)

    @property
    def state(self) -> WorkerState:
        state: WorkerState = self.app.state.worker
        return state

    @property
    def memory_bytes(self) -> int:
        return self.runtime.report.memory_bytes

    def release_instances(self) -> int:
        release = getattr(self.runtime, "release_instances", None)
        return int(release()) if release is not None else 0

    def instances(self) -> int:
        live = getattr(self.runtime, "live_instances", None)
        return int(live()) if live is not None else 0

    def parked(self) -> int:
        """Instances kept in the snapshot's state after a release (the next call from
        zero takes one instead of faulting a new instance's pages in)."""
        parked = getattr(self.runtime, "parked_instances", None)
        return int(parked()) if parked is not None else 0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "active": self.active,
            "instances": self.instances(),
            "parked_instances": self.parked(),
            "in_flight": self.in_flight,
            "memory_bytes": self.memory_bytes,
            "activations": self.activations,
            "load": {"phases": self.load_phases},
        }


class HostedModels:
    """The table of one host's models; every change to a model holds its lock.

    ``budget_bytes`` bounds the resident memory (None: unbounded); ``max_models``
    bounds how many may be resident at once (a load past it that cannot evict is a
    503); ``clock`` is monotonic seconds."""

    def __init__(
        self,
        settings: Settings,
        base_dir: Path,
        *,
        budget_bytes: int | None = None,
        max_models: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self.clock = clock
        self.models: dict[str, HostedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.evicted = 0

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def get(self, name: str) -> HostedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded in this WASM host")
        return model

    async def activate(self, spec: ModelSpec) -> dict[str, Any]:
        """Make ``spec`` active: load it if it is not resident (or resident with another
        spec), else only mark it active (instances are then made by its first call).
        Returns what the host reports: ``{"ready": true, "load": {"phases": ...}}``."""
        if RuntimeName.WASM not in spec.runtimes:
            raise BadInput(f"model {spec.name!r} does not list the wasm runtime")
        if spec.endpoint is not None:
            raise BadInput(f"model {spec.name!r} is an external endpoint, not a WASM model")
        async with self._lock(spec.name):
            start = time.perf_counter()
            model = self.models.get(spec.name)
            if model is not None and model.spec != spec:
                await self._unload_locked(spec.name)
                model = None
            if model is None:
                model = await self._load_locked(spec)
                phases = dict(model.load_phases)
            else:
                phases = {"activate": time.perf_counter() - start}
            model.active = True
            model.activations += 1
            model.last_used = self.clock()
        await self._make_room(keep=spec.name)
        return {"ready": True, "model": spec.name, "load": {"phases": phases}}

    async def preload(self, spec: ModelSpec) -> None:
        """Make ``spec`` resident without activating it (a pod's host loads its
        config's models at start; requests then make instances on demand)."""
        async with self._lock(spec.name):
            if spec.name not in self.models:
                await self._load_locked(spec)
                await asyncio.to_thread(self.models[spec.name].release_instances)

    async def _load_locked(self, spec: ModelSpec) -> HostedModel:
        if len(self.models) >= self.max_models:
            await self._make_room(keep=spec.name, slots=1)
            if len(self.models) >= self.max_models:
                raise ModelNotReady(
                    f"this WASM host holds {len(self.models)} models, its most; "
                    f"none is idle to unload for {spec.name!r}"
                )
        runtime = create_runtime(
            spec, runtime="wasm", device="cpu", settings=self.settings, base_dir=self.base_dir
        )
        app = create_app(spec, runtime)
        state: WorkerState = app.state.worker
        await state.load()  # the app's lifespan never runs here: the host drives it
        if state.load_error is not None:
            await runtime.unload()
            raise ModelNotReady(f"model {spec.name!r} failed to load: {state.load_error.message}")
        now = self.clock()
        model = HostedModel(
            spec=spec,
            runtime=runtime,
            app=app,
            loaded_at=now,
            last_used=now,
            load_phases=dict(runtime.report.phases),
        )
        self.models[spec.name] = model
        log.info("model %s resident in the WASM host", spec.name)
        return model

    async def release(self, name: str) -> dict[str, Any]:
        """Scale ``name`` to zero inside the host: not active, idle instances dropped;
        it stays resident (compiled code mapped, weights in memory) until evicted."""
        async with self._lock(name):
            model = self.get(name)
            model.active = False
            dropped = await asyncio.to_thread(model.release_instances)
        await self._make_room()
        return {"model": name, "released_instances": dropped}

    async def unload(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            self.get(name)
            await self._unload_locked(name)
        return {"model": name, "unloaded": True}

    async def _unload_locked(self, name: str) -> None:
        model = self.models.pop(name)
        model.active = False
        await model.runtime.unload()
        log.info("model %s unloaded from the WASM host", name)

    def resident(self) -> list[Resident]:
        return [
            Resident(m.spec.name, m.memory_bytes, m.last_used, m.active or m.in_flight > 0)
            for m in self.models.values()
        ]

    async def _make_room(self, keep: str | None = None, slots: int = 0) -> None:
        """Evict idle models, least recently used first, until the resident memory fits
        the budget (and ``slots`` more models fit under ``max_models``)."""
        victims = pick_evictions(self.resident(), self.budget_bytes, keep)
        if slots:
            over = len(self.models) + slots - self.max_models
            idle = sorted(
                (r for r in self.resident() if not r.busy and r.name != keep),
                key=lambda r: r.last_used,
            )
            victims += [r.name for r in idle if r.name not in victims][: max(0, over)]
        for name in victims:
            lock = self._lock(name)
            if lock.locked():
                continue  # being loaded or released right now: not a victim
            async with lock:
                model = self.models.get(name)
                if model is None or model.active or model.in_flight:
                    continue
                await self._unload_locked(name)
                self.evicted += 1

    def describe(self) -> dict[str, Any]:
        return {
            "models": [m.describe() for m in self.models.values()],
            "budget_bytes": self.budget_bytes,
            "resident_bytes": sum(m.memory_bytes for m in self.models.values()),
            "evicted": self.evicted,
        }

    async def close(self) -> None:
        for name in list(self.models):
            async with self._lock(name):
                if name in self.models:
                    await self._unload_locked(name)
