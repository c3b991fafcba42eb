"""What the gateway needs from whatever hands out replicas: the local
:class:`~runtime.scaling.supervisor.Supervisor`, or Knative's
:class:`knative.router.ClusterRouter` in cluster mode. Both satisfy these protocols
structurally; the gateway, its metrics and the manager are typed against them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from runtime.scaling.pool import PoolStatus
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import ColdStart, Replica
from runtime.spec.model import ModelSpec

__all__ = ["ReplicaPool", "ReplicaSource"]


class ReplicaPool(Protocol):
    """One model's replicas, as the gateway routes to them."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def replicas(self) -> list[Replica]: ...

    def try_acquire(self, ticket: Ticket = STANDARD) -> Replica | None:
        """A replica with room now for ``ticket``, or None (then :meth:`acquire` waits)."""
        ...

    async def acquire(self, deadline: float, *, ticket: Ticket = STANDARD) -> Replica:
        """A replica by ``deadline`` (clock seconds), or an EdgeInferError saying why not."""
        ...

    def release(self, replica: Replica, *, seconds: float | None = None) -> None:
        """Give the slot back; ``seconds`` the request held it (None: not served)."""
        ...

    def take_out(self, replica: Replica, reason: str) -> None:
        """``replica`` could not be reached (or is unhealthy): no new requests to it."""
        ...

    def status(self) -> PoolStatus: ...

    def hold(self, until: float) -> None:
        """Keep at least one replica until clock time ``until`` (Ollama's ``keep_alive``),
        or an EdgeInferError saying why this source cannot."""
        ...


class ReplicaSource(Protocol):
    """Every model's pool, started and stopped with the gateway.

    ``on_cold_start`` hears of every replica that became ready. The supervisor takes it
    through its constructor; the gateway (whose metrics own the histogram and are made
    after the source) still assigns it before ``start``, as Knative's router needs."""

    on_cold_start: Callable[[str, ColdStart], None] | None

    @property
    def pools(self) -> Mapping[str, ReplicaPool]: ...

    def pool(self, model: str) -> ReplicaPool:
        """The model's pool; ModelNotFound (404) for a model this source does not have."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
