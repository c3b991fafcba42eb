"""Which resident models the WASM host unloads when its memory budget needs room
(``runtime.worker.hosted.pick_evictions``, pure): a table of cases."""

from __future__ import annotations

import pytest

from runtime.worker.hosted import Resident, pick_evictions

MIB = 1 << 20


def r(name: str, mib: int, last_used: float, busy: bool = False) -> Resident:
    return Resident(name, mib * MIB, last_used, busy)


@pytest.mark.parametrize(
    ("resident", "budget_mib", "keep", "want"),
    [
        # no budget: nothing goes
        ([r("a", 100, 1), r("b", 100, 2)], None, None, []),
        # within the budget: nothing goes
        ([r("a", 100, 1), r("b", 100, 2)], 200, None, []),
        # over by one model: the least recently used goes
        ([r("a", 100, 2), r("b", 100, 1), r("c", 100, 3)], 250, None, ["b"]),
        # over by two: the two oldest, oldest first
        ([r("a", 100, 2), r("b", 100, 1), r("c", 100, 3)], 100, None, ["b", "a"]),
        # a busy model (active replica or requests in flight) is never a victim
        ([r("a", 100, 1, busy=True), r("b", 100, 2), r("c", 100, 3)], 250, None, ["b"]),
        # the model being loaded is kept even when it is the oldest
        ([r("a", 100, 1), r("b", 100, 2), r("c", 100, 3)], 250, "a", ["b"]),
        # a big idle model frees the room alone
        ([r("big", 400, 1), r("s1", 10, 2), r("s2", 10, 3)], 100, None, ["big"]),
        # nothing idle: nothing goes, the host runs over its budget
        ([r("a", 100, 1, busy=True), r("b", 100, 2, busy=True)], 50, None, []),
    ],
)
def test_pick_evictions(
    resident: list[Resident], budget_mib: int | None, keep: str | None, want: list[str]
) -> None:
    budget = None if budget_mib is None else budget_mib * MIB
    assert pick_evictions(resident, budget, keep) == want
