"""The cores of this machine as a budget the supervisor owns.

llama.cpp's and onnxruntime's threads wait for each other at every step; two replicas
whose threads together outnumber the cores do not share them, they collapse (issue 15:
20 chat requests took 41 s on 2 replicas of 2 threads on 2 cores, 5 s one after
another). So replicas x threads per replica never exceed the cores given to the
supervisor: a replica takes :func:`replica_threads` cores while it starts, serves and
drains, and a scale-up that does not fit starts what fits and says why the rest waits
(``PoolStatus.cores``). Concurrency inside a replica comes from batching instead
(``runtime.backends.llama_batch``, ``runtime.backends.dynamic_batch``).

Fairness: a model at zero with requests waiting goes first (the one waiting longest
first). While one waits for cores, no other model scales out or starts, and a replica
of another model is drained to make room: an idle one (nothing in flight; Ollama
evicts an idle model the same way) first, else one that has served its turn (``turn``
seconds); among those, the model whose cold start costs least goes first (a MiniLM
replica is back in a second, SmolLM2's in several). So when more models are busy than
the cores hold, they take turns, and every model gets served however many there are.

Width: a model without ``options.threads`` runs on every core when it is the only one
busy. When several are, a replica started then gets ``cores // busy models`` threads
(at least 1), so that they share the cores side by side instead of taking turns, each
turn a cold start (issue 15's mixed load). A model keeps the width it started with
while it holds any replica (:meth:`CoreBudget.width`); the worker is told through
``options.threads`` of the spec it is launched with (:meth:`CoreBudget.launch_spec`).

The budget holds no counts of its own: what is used, and what is on its way back
(replicas draining), is read from the pools each time, so a replica that dies or drains
gives its cores back without being told, and a model that was drained and came back on
free cores is drained again when another waits at zero. (A ledger of past drains kept
here once went stale that way: a model came back on free cores, the budget still counted
its old drain as cores coming back, and magika waited at zero for 60 s in CI.)

Replicas in the WASM host and external endpoints take no cores here: a guest call
runs on one thread that waits for no other, and the host bounds its threads.

A model in crash-loop back-off takes no cores and has no other model drained for it:
its next start may fail too, and it would hold the cores while it sleeps out the delay.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime.scaling.replica import ReplicaState
from runtime.scaling.wasm_host import in_host as runs_wasm
from runtime.settings import Settings
from runtime.spec.model import ModelSpec

if TYPE_CHECKING:
    from runtime.scaling.pool import ModelPool

__all__ = ["CoreBudget", "host_cores", "replica_threads"]


def host_cores() -> int:
    """The cores this process may run on (its affinity mask, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def replica_threads(spec: ModelSpec, cores: int) -> int:
    """Compute threads one replica of ``spec`` runs with when ``cores`` are given to
    replicas: ``options.threads``, else all of them (what the llama and onnx runtimes
    do, ``Settings.threads``)."""
    return Settings(cpu_cores=cores).threads(spec.options.threads)


def _holding(pool: ModelPool) -> int:
    """Replicas of ``pool`` that hold cores: starting (spawns included), serving, draining."""
    return pool.count(ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING)


def _idle(pool: ModelPool) -> int:
    return sum(1 for r in pool.replicas if r.state is ReplicaState.READY and not r.in_flight)


def _backoff(pool: ModelPool, now: float) -> float:
    """Seconds until ``pool``'s next start may begin (crash-loop back-off); 0 if none."""
    return max(0.0, pool.backoff_until - now) if pool.failed_starts else 0.0


def _busy(pool: ModelPool) -> bool:
    """Requests waiting for ``pool`` or in flight on it."""
    return bool(len(pool.queue)) or any(r.in_flight for r in pool.replicas)


def _cold_start_seconds(pool: ModelPool) -> float:
    """What ``pool``'s last cold start took (0 before its first)."""
    return pool.last_cold_start.total if pool.last_cold_start is not None else 0.0


def _served_turn(pool: ModelPool, now: float, turn: float) -> int:
    return sum(
        1 for r in pool.replicas if r.state is ReplicaState.READY and now - r.started >= turn
    )


class CoreBudget:
    """``cores`` compute cores shared by every pool's replicas. ``clock`` is the
    supervisor's; a serving replica of another model is drained for a model at zero
    only after it has served ``turn`` seconds (so busy models take turns, not thrash)."""

    def __init__(self, cores: int, *, clock: Callable[[], float], turn: float = 10.0) -> None:
        if cores < 1:
            raise ValueError(f"a core budget needs at least 1 core, got {cores}")
        self.cores = cores
        self.turn = turn
        self._clock = clock
        self._pools: list[ModelPool] = []
        self._starved: dict[str, float] = {}  # model -> since when it waits at zero
        # model -> threads of its replicas, set when it starts from zero; read only
        # while it holds a replica (so no count here outlives the replicas it describes).
        self._width: dict[str, int] = {}

    def track(self, pool: ModelPool) -> None:
        self._pools.append(pool)

    def width(self, pool: ModelPool) -> int:
        """Threads (cores) one replica of ``pool`` runs: the width it started with while
        it holds replicas, else what a replica started now would get; 0 for an external
        endpoint or a replica in the WASM host (its guest calls run one thread each and
        never wait for each other; the host bounds its threads)."""
        if pool.external or self._in_host(pool):
            return 0
        if _holding(pool) and pool.spec.name in self._width:
            return self._width[pool.spec.name]
        full = replica_threads(pool.spec, self.cores)
        if pool.spec.options.threads is not None:
            return full  # the config's own choice
        busy = sum(
            1
            for p in self._pools
            if p is pool or (not p.external and not self._in_host(p) and _busy(p))
        )
        return min(full, max(1, self.cores // busy))

    def launch_spec(self, pool: ModelPool) -> ModelSpec:
        """The spec a new replica of ``pool`` is launched with: its own, with
        ``options.threads`` set where the budget narrowed it."""
        spec = pool.spec
        width = self.width(pool)
        if not width:  # outside the budget (an endpoint, the WASM host): its own spec
            return spec
        if spec.options.threads is not None or width >= replica_threads(spec, self.cores):
            return spec
        return spec.model_copy(
            update={"options": spec.options.model_copy(update={"threads": width})}
        )

    @staticmethod
    def _in_host(pool: ModelPool) -> bool:
        return runs_wasm(pool.spec, pool.placement.primary if pool.placement else None)

    def used(self) -> int:
        """Cores held by replicas starting, serving or draining."""
        return sum(_holding(p) * self.width(p) for p in self._pools)

    def returning(self) -> int:
        """Cores held by replicas draining: free once their requests in flight end."""
        return sum(p.count(ReplicaState.DRAINING) * self.width(p) for p in self._pools)

    def admit(self, pool: ModelPool, n: int) -> tuple[int, str]:
        """How many of ``n`` new replicas of ``pool`` may start now, and why the rest
        may not, or that they start narrowed ("" when all may, at full width)."""
        cost = self.width(pool)
        if cost == 0 or n <= 0:
            return n, ""
        if cost > self.cores:
            return 0, (
                f"a replica needs {cost} threads (options.threads) and the budget has "
                f"{self.cores} cores: it can never start; lower options.threads"
            )
        backoff = _backoff(pool, self._clock())
        if backoff:
            return 0, f"crash-loop back-off: takes no cores until its next try in {backoff:.0f}s"
        at_zero = _holding(pool) == 0
        first = self._first_in_line()
        if first is not None and first is not pool:
            why = "at zero with requests waiting" if at_zero else "at zero, requests waiting"
            return 0, f"waiting for cores: {first.spec.name} ({why}) goes first"
        used = self.used()
        fits = min(n, max(0, (self.cores - used) // cost))
        if fits:
            self._width[pool.spec.name] = cost
        full = replica_threads(pool.spec, self.cores)
        narrowed = (
            f"replicas of {cost} of {full} threads: other models are busy on the {self.cores} cores"
            if cost < full
            else ""
        )
        if fits == n:
            return n, narrowed
        if at_zero and fits == 0 and len(pool.queue):
            # Only for requests waiting: a model whose window merely still wants a
            # replica drained a serving one every tick, and they ping-ponged.
            self._make_room(pool, cost - (self.cores - used))
        return fits, (
            f"waiting for cores: {n - fits} more replica(s) of {cost} threads do not fit "
            f"({used} of {self.cores} cores in use)"
        )

    def _first_in_line(self) -> ModelPool | None:
        """The model that has waited longest at zero with requests waiting, if any (one
        in crash-loop back-off keeps its place but lets the others go meanwhile)."""
        now = self._clock()
        for p in self._pools:
            if len(p.queue) and not _holding(p) and self.width(p):
                self._starved.setdefault(p.spec.name, now)
            else:
                self._starved.pop(p.spec.name, None)
        eligible = {p.spec.name: p for p in self._pools if not _backoff(p, now)}
        # sorted() is stable and the dict keeps arrival order: a tie goes to the first.
        for name in sorted(self._starved, key=self._starved.__getitem__):
            if name in eligible:
                return eligible[name]
        return None

    def _make_room(self, pool: ModelPool, need: int) -> None:
        """Drain replicas of other models until ``need`` cores will be free, counting
        the ones draining already: idle ones first, then ones that have served their
        turn. ``scale_down`` marks them draining at once, so a second call in the same
        moment counts them and drains no more."""
        need -= self.returning()
        now = self._clock()
        # The cheapest to bring back first: a fast cold start is a short turn lost.
        cheapest = sorted(self._pools, key=_cold_start_seconds)
        for victims in (_idle, lambda p: _served_turn(p, now, self.turn)):
            for other in cheapest:
                if need <= 0:
                    return
                if other is pool or other.external:
                    continue
                if victims is _idle and len(other.queue):
                    continue
                cost = self.width(other)
                if cost == 0:
                    continue  # draining it frees no cores
                n = min(victims(other), -(-need // cost))
                if n:
                    other.scale_down(n)
                    need -= n * cost
