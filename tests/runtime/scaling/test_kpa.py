"""The autoscaler policy on fake timelines: tables of cases, hand-computed, no sleeping."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from runtime.scaling.kpa import (
    ConcurrencyWindow,
    ScaleDecision,
    ScalerState,
    WindowStats,
    decide,
    effective_target,
    initial_replicas,
)
from runtime.spec.scaling import ScalingRule

# Target 10 at 100% utilization: a replica per 10 requests in flight keeps the sums simple.
BASE: dict[str, Any] = {"target": 10, "target-utilization-percentage": 100}


def rule(**knobs: Any) -> ScalingRule:
    return ScalingRule.model_validate(
        {**BASE, **{k.replace("_", "-"): v for k, v in knobs.items()}}
    )


def steady(desired: int, **fields: Any) -> ScalerState:
    """A model long past start-up, last busy at -1000 unless told otherwise."""
    return replace(ScalerState(desired=desired, last_demand=-1000.0), **fields)


# ---- the recorder ---------------------------------------------------------------------


def window(horizon: float, *events: tuple[float, int]) -> ConcurrencyWindow:
    w = ConcurrencyWindow(horizon)
    for t, n in events:
        w.record(t, n)
    return w


@pytest.mark.parametrize(
    ("events", "now", "seconds", "expected"),
    [
        # 2 for 10s, 0 for 10s, 4 for 10s: (20 + 0 + 40) / 30.
        ([(0, 2), (10, 0), (20, 4)], 30, 30, 2.0),
        ([(0, 2), (10, 0), (20, 4)], 30, 10, 4.0),
        ([(0, 2), (10, 0), (20, 4)], 30, 20, 2.0),
        # Time before the first record counts as zero: 60 concurrency-seconds over 60s.
        ([(0, 2), (10, 0), (20, 4)], 30, 60, 1.0),
        # Sub-second changes inside buckets: (3 * 1.75 + 1 * 0.75) / 3.
        ([(0, 0), (0.5, 3), (2.25, 1)], 3.0, 3.0, 2.0),
        # The open segment since the last record counts without a tick.
        ([(0, 1)], 5, 5, 1.0),
        # A window starting mid-bucket spreads that bucket evenly: 2 * 0.5 of [4, 5].
        ([(0, 2), (5, 0)], 10, 5.5, 1.0 / 5.5),
        # Once the last busy moment leaves the window the mean is exactly zero, even
        # though the window starts inside the bucket that saw it.
        ([(10.5, 1), (10.6, 0), (30, 0)], 70.7, 60, 0.0),
        ([(10.5, 1), (10.6, 0), (30, 0)], 70.5, 60, 0.1 / 60),
        # Time running backwards is read as no time passing.
        ([(5, 1), (4, 0)], 10, 10, 0.0),
        ([], 10, 10, 0.0),
    ],
)
def test_window_average(
    events: list[tuple[float, int]], now: float, seconds: float, expected: float
) -> None:
    assert window(60, *events).average(now, seconds) == pytest.approx(expected, abs=1e-12)


def test_window_forgets_beyond_horizon_and_does_not_loop_over_long_gaps() -> None:
    # A request stuck for ~30 years must not cost 1e9 loop turns, nor keep 1e9 buckets.
    w = window(10, (0, 5), (1e9, 0))
    assert w.average(1e9, 10) == 5.0
    assert len(w._buckets) <= 10
    w.record(1e9 + 5, 1)
    w.record(1e9 + 10, 0)
    assert w.average(1e9 + 10, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="seconds must be in"):
        w.average(1e9 + 10, 11)


def test_window_keeps_at_most_a_horizon_of_buckets() -> None:
    w = window(10, (0, 1))
    for t in range(1, 100):
        w.tick(t)
    assert len(w._buckets) <= 11 and w.average(99, 10) == 1.0


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [
        ([], 5, None),
        ([(0, 0)], 5, None),
        ([(3, 2)], 5, 5),  # busy now
        ([(3, 2), (7, 0)], 9, 7),  # the last request finished at 7
        ([(3, 2), (7, 0), (8, 0)], 9, 7),  # a tick at zero is not activity
    ],
)
def test_last_active(events: list[tuple[float, int]], now: float, expected: float | None) -> None:
    assert window(60, *events).last_active(now) == expected


def test_stats_use_the_rules_two_windows() -> None:
    # 60s stable window, 6s panic window: 6 in flight for the last 6s only.
    w = window(60, (0, 0), (54, 6))
    stats = w.stats(60, rule())
    assert stats == WindowStats(stable=0.6, panic=6.0, in_flight=6, last_active=60)


# ---- single decisions -----------------------------------------------------------------

# Stats are (stable mean, panic mean, in flight); "prev" is the last decision. With target 10
# the stable count is ceil(stable / 10) and the panic count ceil(panic / 10).
IN_PANIC = {"panic_started": 0.0, "last_over_threshold": 10.0}
# fmt: off
DECISIONS = [
    # (id, rule knobs, stats, ready, prev state, now, desired, panic)
    ("at target", {}, (30, 30, 30), 3, steady(3), 0, 3, False),
    ("just over target", {}, (30.5, 30, 30), 3, steady(3), 0, 4, False),
    ("float noise", {}, (20.000000000001, 20, 20), 2, steady(2), 0, 2, False),
    ("utilization 70%", {"target_utilization_percentage": 70}, (30, 30, 30), 3, steady(3), 0,
     5, False),
    ("default target and utilization", {"target": 100, "target_utilization_percentage": 70},
     (140, 140, 140), 2, steady(2), 0, 2, False),
    ("cc = target, 50%", {"container_concurrency": 10, "target_utilization_percentage": 50},
     (30, 30, 30), 6, steady(6), 0, 6, False),
    ("halving from 8", {}, (0, 0, 0), 8, steady(8), 0, 4, False),
    ("halving from 5", {}, (0, 0, 0), 5, steady(5), 0, 2, False),
    ("up at most 1000x", {}, (1e6, 1e6, 1e6), 2, steady(2, **IN_PANIC), 0, 2000, True),
    ("up at most 1000 from zero", {}, (1e6, 0, 1), 0, steady(0), 0, 1000, False),
    ("max-scale", {"max_scale": 4}, (100, 40, 40), 4, steady(4), 0, 4, False),
    ("min-scale", {"min_scale": 2}, (0, 0, 0), 2, steady(2), 0, 2, False),
    ("request at zero", {}, (0, 0, 1), 0, steady(0), 0, 1, False),
    ("idle at zero stays", {}, (0, 0, 0), 0, steady(0), 0, 0, False),
    # Panic starts when the panic count is 200% of ready: 6 / 3 does, 5 / 3 does not.
    ("panic starts", {}, (40, 60, 60), 3, steady(3), 0, 6, True),
    ("below threshold", {}, (40, 50, 50), 3, steady(3), 0, 4, False),
    ("threshold 300%", {"panic_threshold_percentage": 300}, (40, 60, 60), 3, steady(3), 0,
     4, False),
    ("panic from zero", {}, (0, 20, 20), 0, steady(0), 0, 2, True),
    # Last over the threshold at t=10: panic holds the count until t=70.
    ("panic never lowers", {}, (30, 30, 30), 6, steady(8, **IN_PANIC), 69.9, 8, True),
    ("panic ends a window later", {}, (30, 30, 30), 6, steady(8, **IN_PANIC), 70, 3, False),
    ("panic refreshed", {}, (30, 60, 30), 3, steady(6, **IN_PANIC), 70, 6, True),
]
# fmt: on


@pytest.mark.parametrize(
    ("knobs", "stats", "ready", "state", "now", "desired", "panic"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_decide(
    knobs: dict[str, Any],
    stats: tuple[float, float, int],
    ready: int,
    state: ScalerState,
    now: float,
    desired: int,
    panic: bool,
) -> None:
    stable, panic_avg, in_flight = stats
    last = now if in_flight else None
    got = decide(WindowStats(stable, panic_avg, in_flight, last), ready, state, rule(**knobs), now)
    assert (got.desired, got.panic) == (desired, panic), got.reason
    assert got.state.desired == desired and got.reason


def test_panic_refresh_moves_the_end_not_the_start() -> None:
    state = steady(6, panic_started=0.0, last_over_threshold=10.0)
    got = decide(WindowStats(30, 60, 30, 70), 3, state, rule(), 70)
    assert (got.state.panic_started, got.state.last_over_threshold) == (0.0, 70)


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({}, 10.0),
        ({"target_utilization_percentage": 70}, 7.0),
        ({"target": 100, "target_utilization_percentage": 70}, 70.0),
        ({"target": 0.01, "target_utilization_percentage": 1}, 0.01),  # Knative's floor
    ],
)
def test_effective_target(knobs: dict[str, Any], expected: float) -> None:
    assert effective_target(rule(**knobs)) == pytest.approx(expected)


def test_container_concurrency_caps_the_target() -> None:
    # The rule's validator rejects target > container-concurrency; Knative caps instead,
    # and so does the policy if such a rule reaches it.
    capped = ScalingRule.model_construct(
        target=100.0, container_concurrency=4, target_utilization_percentage=50.0
    )
    assert effective_target(capped) == 2.0


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({}, 1),
        ({"initial_scale": 0}, 0),
        ({"initial_scale": 0, "min_scale": 2}, 2),
        ({"initial_scale": 3, "max_scale": 5}, 3),
    ],
)
def test_initial_replicas(knobs: dict[str, Any], expected: int) -> None:
    assert initial_replicas(rule(**knobs)) == expected
    assert ScalerState.start(rule(**knobs), 0).desired == expected


# ---- timelines ------------------------------------------------------------------------


def simulate(
    r: ScalingRule,
    load: list[tuple[float, int]],
    ticks: range,
    state: ScalerState,
    *,
    ready: int | None = None,
    grace: float = 30.0,
) -> dict[int, ScaleDecision]:
    """Decide once a second; ``load`` is (time, in flight) steps, fed before each tick.

    With ``ready`` None, replicas come up by the next tick (ready = last decision).
    """
    w = ConcurrencyWindow(r.window)
    pending = sorted(load, key=lambda step: step[0])  # stable: same-time steps keep order
    out: dict[int, ScaleDecision] = {}
    for t in ticks:
        while pending and pending[0][0] <= t:
            w.record(*pending.pop(0))
        w.tick(t)
        n_ready = state.desired if ready is None else ready
        out[t] = decide(w.stats(t, r), n_ready, state, r, t, scale_to_zero_grace=grace)
        state = out[t].state
    return out


# fmt: off
TIMELINES = [
    # (id, rule knobs, load steps, replicas at t=0, ready (None: follows), {t: (desired, panic)})
    ("steady at target", {}, [(-120, 30)], 3, None, {0: (3, False), 60: (3, False)}),
    # 30 in flight on 3 replicas, doubled to 60 at t=10 (ready stays 3). The panic window
    # (6s) sees ceil(5.5) = 6 = 200% of 3 at t=15 while the stable count is still 4.
    # Back to 30 at t=20; the panic count last reaches 6 at t=21 (55 in flight), so panic
    # holds 6 until t=81, a stable window later, and the stable count is then 3.
    ("doubling panics", {}, [(-120, 30), (10, 60), (20, 30)], 3, 3,
     {14: (4, False), 15: (6, True), 50: (6, True), 80: (6, True), 81: (3, False)}),
    # 6s window, 800 -> 0 at t=0: the stable mean falls 133/s (80, 67, 54, 40, 27, 14, 0
    # replicas), then halving binds: 7, 3, 1; wanted 0 at t=9 (idle 9s >= 6s), zero at 39.
    ("halving", {"window": "6s"}, [(-120, 800), (0, 0)], 80, None,
     {5: (14, False), 6: (7, False), 7: (3, False), 8: (1, False), 38: (1, False),
      39: (0, False)}),
    # 80 -> 0 at t=0 on 8 ready: wanted 8, 7, 6, 4 (halving floor) at t=0..3.
    ("no delay", {"window": "6s"}, [(-120, 80), (0, 0)], 8, 8,
     {0: (8, False), 1: (7, False), 2: (6, False), 3: (4, False), 9: (4, False)}),
    # The same with scale-down-delay 10s: the output is the largest of the last 10s.
    ("scale-down-delay", {"window": "6s", "scale_down_delay": "10s"}, [(-120, 80), (0, 0)], 8, 8,
     {9: (8, False), 10: (7, False), 11: (6, False), 12: (4, False), 30: (4, False)}),
    # One request 0..10. The stable mean is zero from t=70 (window 60), zero at 70 + 30.
    ("zero after window+grace", {}, [(0, 1), (10, 0)], 1, None,
     {69: (1, False), 99: (1, False), 100: (0, False), 200: (0, False)}),
    # Retention 90s > grace 30s: Knative waits the longer of the two, from t=70.
    ("zero after retention", {"scale_to_zero_pod_retention_period": "90s"}, [(0, 1), (10, 0)],
     1, None, {100: (1, False), 159: (1, False), 160: (0, False)}),
    # Delay 20s: 1 was last wanted at t=69, so the decider wants 0 from t=89; zero at 119.
    ("zero after delay", {"scale_down_delay": "20s"}, [(0, 1), (10, 0)], 1, None,
     {88: (1, False), 118: (1, False), 119: (0, False)}),
    ("min-scale never zero", {"min_scale": 1}, [(0, 1), (10, 0)], 1, None, {500: (1, False)}),
    # Busy again 90..91: the stable mean is zero from t=151, zero at 181.
    ("traffic resets idleness", {}, [(0, 1), (10, 0), (90, 1), (91, 0)], 1, None,
     {100: (1, False), 180: (1, False), 181: (0, False)}),
    # A request that starts and ends between ticks leaves no mean but still resets idleness.
    ("instant request counts", {}, [(0, 1), (10, 0), (90.5, 1), (90.5, 0)], 1, None,
     {100: (1, False), 180: (1, False), 181: (0, False)}),
    # At zero, a request arrives at t=200.5: one replica at the next tick.
    ("request at zero", {}, [(0, 1), (10, 0), (200.5, 1)], 1, None,
     {200: (0, False), 201: (1, False)}),
    # 90 in flight on 3 ready: panic wants 9, max-scale allows 4.
    ("max-scale in panic", {"max_scale": 4}, [(-120, 30), (10, 90)], 3, 3,
     {9: (3, False), 20: (4, True)}),
]
# fmt: on


@pytest.mark.parametrize(
    ("knobs", "load", "replicas", "ready", "expected"),
    [case[1:] for case in TIMELINES],
    ids=[case[0] for case in TIMELINES],
)
def test_timeline(
    knobs: dict[str, Any],
    load: list[tuple[float, int]],
    replicas: int,
    ready: int | None,
    expected: dict[int, tuple[int, bool]],
) -> None:
    r = rule(**knobs)
    start = steady(replicas, last_demand=0.0)
    got = simulate(r, load, range(max(expected) + 1), start, ready=ready)
    for t, want in expected.items():
        assert (got[t].desired, got[t].panic) == want, f"t={t}: {got[t].reason}"


def test_boot_without_traffic_goes_to_zero_a_window_plus_grace_later() -> None:
    # initial-scale 2, both ready at boot, no traffic: halves to 1, which is kept for a
    # stable window from boot (Knative's active-for-a-window rule) and then the grace.
    r = rule(initial_scale=2)
    got = simulate(r, [], range(0, 100), ScalerState.start(r, 0.0))
    assert [got[t].desired for t in (0, 1, 59, 60)] == [1, 1, 1, 1]
    assert (got[89].desired, got[90].desired) == (1, 0)
    assert "idle since 0s: scaled to zero" in got[90].reason


def test_initial_scale_waits_for_ready() -> None:
    r = rule(initial_scale=3)
    state = ScalerState.start(r, 0.0)
    for t in range(5):  # replicas still loading
        state = decide(WindowStats(0, 0), 0, state, r, t).state
        assert state.desired == 3
    assert decide(WindowStats(0, 0), 3, state, r, 5).desired == 1


def test_delay_window_keeps_one_entry_per_level_and_says_why() -> None:
    # An hour of delay at one decision a second must not hold 3600 entries.
    r, state = rule(scale_down_delay="1h"), steady(3)
    for t in range(100):
        state = decide(WindowStats(30, 30, 30, t), 3, state, r, t).state
    assert state.recent == ((99, 3),)
    got = decide(WindowStats(0, 0), 3, state, r, 100)
    assert got.desired == 3 and "held at 3 by scale-down-delay 3600s" in got.reason
    assert got.state.recent == ((99, 3), (100, 1))


def test_a_request_in_flight_is_demand_even_without_a_last_active_time() -> None:
    got = decide(WindowStats(0, 0, in_flight=2), 1, steady(1), rule(), 500)
    assert got.state.last_demand == 500 and got.state.inactive_since is None


def test_panic_reason_says_how_long_not_the_clock_reading() -> None:
    # A monotonic clock reads thousands of seconds (time since boot); the reason must
    # say how long the panic has lasted (issue 15: "panic since 5999.93s" at 40 s).
    state = steady(6, panic_started=6000.0, last_over_threshold=6010.0)
    got = decide(WindowStats(30, 60, 30, 6012.5), 3, state, rule(), 6012.5)
    assert got.panic and got.reason.startswith("panic for 12.5s:"), got.reason
    assert "6000" not in got.reason
