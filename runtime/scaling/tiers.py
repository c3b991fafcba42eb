"""Which replicas a placement wants started and drained: a pure decision.

A model's pool serves from its placement's primary tier; a bridge tier answers cold
starts and may be kept warm (its ``min_scale``); during a move the old tier serves
until enough new primary replicas are ready. :func:`tier_moves` says, from the
placement and a snapshot of the replicas, which bridges to start (below their warm
minimum) and which off-primary replicas to drain; the pool applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from runtime.scaling.replica import ReplicaState
from runtime.spec.placement import Placement, Tier

__all__ = ["Placed", "TierMoves", "same_tier", "tier_moves"]


def same_tier(a: Tier | None, b: Tier | None) -> bool:
    """The same replica set: runtime, device and cluster (role and warm minimum aside)."""
    if a is None or b is None:
        return a is b
    return (a.runtime, a.device, a.cluster) == (b.runtime, b.device, b.cluster)


class Placed(Protocol):
    """What the decision reads of one replica (a ``Replica`` fits)."""

    @property
    def tier(self) -> Tier | None: ...
    @property
    def state(self) -> ReplicaState: ...
    @property
    def in_flight(self) -> int: ...


P = TypeVar("P", bound=Placed)

_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


@dataclass(frozen=True)
class TierMoves(Generic[P]):
    """``start``: (bridge tier, how many) to start; ``drain``: replicas to drain;
    ``settled``: the old tier may go (as many primaries ready as ``hold`` asked)."""

    start: tuple[tuple[Tier, int], ...] = ()
    drain: tuple[P, ...] = ()
    settled: bool = False


def is_primary(placement: Placement | None, replica: Placed) -> bool:
    """Whether ``replica`` is of the placement's primary tier (all are, unplaced)."""
    return placement is None or same_tier(replica.tier, placement.primary)


def tier_moves(
    placement: Placement | None,
    replicas: Sequence[P],
    *,
    hold: int = 0,
    bridging: int = 0,
) -> TierMoves[P]:
    """Starts and drains for ``placement`` over ``replicas``; pure.

    Off-primary replicas (bridges, the old tier of a move) are drained once the primary
    tier has ``hold`` ready replicas (``hold`` 0: at once), the least busy kept first
    where a bridge of the placement keeps a warm minimum. Bridges below their minimum
    are started, counting ``bridging`` replicas already being started as theirs."""
    if placement is None:
        return TierMoves(settled=hold == 0)
    ready = sum(1 for r in replicas if r.state is ReplicaState.READY and is_primary(placement, r))
    others = [r for r in replicas if r.state in _LIVE and not is_primary(placement, r)]
    settled = ready >= hold
    drain: list[P] = []
    if settled:
        keep = [b.min_scale or 0 for b in placement.bridges]
        for r in sorted(others, key=lambda r: r.in_flight):
            slot = next((i for i, b in enumerate(placement.bridges) if same_tier(r.tier, b)), None)
            if slot is not None and keep[slot] > 0:
                keep[slot] -= 1
                continue
            drain.append(r)
    staying = [r for r in others if not any(r is d for d in drain)]
    start = []
    for bridge in placement.bridges:
        have = sum(1 for r in staying if same_tier(r.tier, bridge))
        missing = (bridge.min_scale or 0) - have - bridging
        if missing > 0:
            start.append((bridge, missing))
    return TierMoves(start=tuple(start), drain=tuple(drain), settled=settled)
