"""runtime.scaling.tiers: the pure tier-move decision, as a table of
(placement, replicas) -> (start, drain)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from runtime.scaling.replica import ReplicaState
from runtime.scaling.tiers import same_tier, tier_moves
from runtime.spec.model import RuntimeName
from runtime.spec.placement import Device, Placement, Tier, TierRole

GPU = Tier(RuntimeName.ONNX, Device.CUDA)
CPU = Tier(RuntimeName.ONNX, Device.CPU)
WASM = Tier(RuntimeName.WASM, Device.CPU)
CPU_BRIDGE = Tier(RuntimeName.ONNX, Device.CPU, role=TierRole.BRIDGE)
CPU_WARM = Tier(RuntimeName.ONNX, Device.CPU, role=TierRole.BRIDGE, min_scale=1)
WASM_WARM2 = Tier(RuntimeName.WASM, Device.CPU, role=TierRole.BRIDGE, min_scale=2)

R, S, D = ReplicaState.READY, ReplicaState.STARTING, ReplicaState.DRAINING


@dataclass(frozen=True)
class Rep:
    """A replica as the decision sees it (name for the table; tier, state, load)."""

    name: str
    tier: Tier | None
    state: ReplicaState
    in_flight: int = 0


def place(*tiers: Tier) -> Placement:
    return Placement("m", tiers)


# (case, placement, replicas, hold, bridging, expected start, expected drain, settled)
CASES = [
    ("unplaced: nothing to do", None, [Rep("a", None, R)], 0, 0, [], [], True),
    ("primary only", place(CPU), [Rep("a", CPU, R), Rep("b", CPU, S)], 1, 0, [], [], True),
    (
        "cold-start bridge drained once a primary is ready",
        place(GPU, CPU_BRIDGE),
        [Rep("gpu", GPU, R), Rep("cpu", CPU_BRIDGE, R, in_flight=2)],
        1,
        0,
        [],
        ["cpu"],
        True,
    ),
    (
        "cold-start bridge kept while no primary is ready",
        place(GPU, CPU_BRIDGE),
        [Rep("gpu", GPU, S), Rep("cpu", CPU_BRIDGE, R)],
        1,
        0,
        [],
        [],
        False,
    ),
    (
        "warm bridge keeps its minimum, the least busy one",
        place(GPU, CPU_WARM),
        [Rep("gpu", GPU, R), Rep("busy", CPU_WARM, R, 3), Rep("idle", CPU_WARM, R, 0)],
        1,
        0,
        [],
        ["busy"],
        True,
    ),
    (
        "warm bridge below its minimum is started",
        place(GPU, WASM_WARM2),
        [Rep("gpu", GPU, R), Rep("w", WASM_WARM2, R)],
        1,
        0,
        [(WASM_WARM2, 1)],
        [],
        True,
    ),
    (
        "bridges already being started count toward the minimum",
        place(GPU, WASM_WARM2),
        [Rep("gpu", GPU, R)],
        1,
        2,
        [],
        [],
        True,
    ),
    (
        "move: the old tier serves until as many new primaries are ready",
        place(GPU),
        [Rep("old1", CPU, R), Rep("old2", CPU, R), Rep("new1", GPU, R), Rep("new2", GPU, S)],
        2,
        0,
        [],
        [],
        False,
    ),
    (
        "move: enough new primaries ready, the old tier drains",
        place(GPU),
        [Rep("old1", CPU, R), Rep("old2", CPU, R), Rep("new1", GPU, R), Rep("new2", GPU, R)],
        2,
        0,
        [],
        ["old1", "old2"],
        True,
    ),
    (
        "move with nothing serving: others drain at once (hold 0)",
        place(WASM),
        [Rep("bridge", CPU_BRIDGE, S)],
        0,
        0,
        [],
        ["bridge"],
        True,
    ),
    (
        "a bridge of the tier moved to counts as primary",
        place(CPU),
        [Rep("was-bridge", CPU_BRIDGE, R), Rep("old", GPU, R)],
        1,
        0,
        [],
        ["old"],
        True,
    ),
    (
        "draining and stopped replicas are neither kept nor drained again",
        place(GPU, CPU_WARM),
        [Rep("gpu", GPU, R), Rep("going", CPU_WARM, D)],
        1,
        0,
        [(CPU_WARM, 1)],
        [],
        True,
    ),
]


@pytest.mark.parametrize(
    ("placement", "replicas", "hold", "bridging", "start", "drain", "settled"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_tier_moves(
    placement: Placement | None,
    replicas: list[Rep],
    hold: int,
    bridging: int,
    start: list[tuple[Tier, int]],
    drain: list[str],
    settled: bool,
) -> None:
    moves = tier_moves(placement, replicas, hold=hold, bridging=bridging)
    assert list(moves.start) == start
    assert sorted(r.name for r in moves.drain) == sorted(drain)
    assert moves.settled is settled


def test_tier_moves_is_pure() -> None:
    replicas = (Rep("gpu", GPU, R), Rep("cpu", CPU_BRIDGE, R))
    first = tier_moves(place(GPU, CPU_BRIDGE), replicas, hold=1)
    again = tier_moves(place(GPU, CPU_BRIDGE), replicas, hold=1)
    assert first == again
    assert [r.state for r in replicas] == [R, R]  # decided, not applied


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (CPU, CPU_BRIDGE, True),  # role aside
        (CPU, CPU_WARM, True),  # warm minimum aside
        (CPU, GPU, False),
        (CPU, WASM, False),
        (CPU, Tier(RuntimeName.ONNX, Device.CPU, cluster="edge"), False),
        (None, None, True),
        (None, CPU, False),
    ],
)
def test_same_tier(a: Tier | None, b: Tier | None, same: bool) -> None:
    assert same_tier(a, b) is same
