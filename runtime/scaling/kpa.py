"""The embedded autoscaler's policy: Knative KPA semantics as pure code.

:class:`ConcurrencyWindow` is the one mutable object: the gateway tells it how many
requests are in flight for a model whenever that changes, and :meth:`~ConcurrencyWindow.stats`
freezes what the policy needs. :func:`decide` is pure over that snapshot, the ready count,
the previous :class:`ScalerState`, the rule and ``now``; it never reads the clock.

The KPA, in short, and so :func:`decide`: a replica should carry ``target`` requests (at
most ``container-concurrency``) times the utilization percentage. The stable count is the
stable-window mean concurrency over that, rounded up; the panic count the same over the
panic window. Per decision both stay within [ready / 2, ready x 1000]. Panic starts when
the panic count reaches ``panic-threshold-percentage`` of the ready count and ends a whole
stable window after it last did; while panicking the count never falls.
``scale-down-delay`` holds the largest count of that many seconds. With ``min-scale`` 0
the last replica goes only after a stable window without traffic plus the longer of the
scale-to-zero grace period and ``scale-to-zero-pod-retention-period`` (Knative marks the
revision inactive, then measures both from that moment). A request in flight asks for at
least one replica; ``initial-scale`` holds until that many were ready; last comes the
clamp to ``[min-scale, max-scale]``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from runtime.spec.scaling import ScalingRule

__all__ = [
    "UNBOUNDED",
    "ConcurrencyWindow",
    "ScaleDecision",
    "ScalerState",
    "WindowStats",
    "decide",
    "effective_target",
    "initial_replicas",
]

# Knative's config-autoscaler defaults: max-scale-up-rate and max-scale-down-rate.
MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0
_TARGET_MIN = 0.01  # Knative's autoscaling.TargetMin
# What a limit of 0 ("none": max-scale, container-concurrency) counts as where a number
# is needed: more replicas or requests than any host or cluster will see.
UNBOUNDED = 1_000_000


class ConcurrencyWindow:
    """Requests in flight for one model over time; the autoscaler's only mutable input.

    Call :meth:`record` with the new in-flight count whenever a request starts or finishes
    (requests queued at the gateway count as in flight, like Knative's activator reports
    them) and :meth:`tick` before each decision. Times are seconds on one monotonic clock,
    passed in; a time earlier than the last one seen is treated as the last one.
    """

    def __init__(self, horizon: float) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.horizon = horizon
        self._buckets: deque[tuple[int, float]] = deque()  # (second, concurrency-seconds)
        self._origin: float | None = None  # first time seen; nothing is known before it
        self._since = 0.0  # the buckets hold the integral up to this time
        self._in_flight = 0
        self._last_active: float | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def record(self, now: float, in_flight: int) -> None:
        """The number of requests in flight changed to ``in_flight`` at ``now``."""
        if in_flight < 0:
            raise ValueError(f"in_flight must be >= 0, got {in_flight}")
        now = self._advance(now)
        if in_flight or self._in_flight:
            self._last_active = now
        self._in_flight = in_flight

    def tick(self, now: float) -> None:
        """Advance to ``now`` with the count unchanged, dropping history beyond the horizon."""
        self.record(now, self._in_flight)

    def last_active(self, now: float) -> float | None:
        """When concurrency was last above zero: ``now`` while busy, None if never."""
        return max(now, self._since) if self._in_flight else self._last_active

    def average(self, now: float, seconds: float) -> float:
        """Time-weighted mean concurrency over ``[now - seconds, now]``.

        Time before the first record counts as zero, as in Knative, which divides by the
        whole window. Inside the one bucket cut by the window's start, concurrency is taken
        as spread evenly, so the result is exact when ``now - seconds`` is a whole second.
        """
        if not 0 < seconds <= self.horizon:
            raise ValueError(f"seconds must be in (0, {self.horizon}], got {seconds}")
        if self._origin is None:
            return 0.0
        now = max(now, self._since)
        start = now - seconds
        if not self._in_flight and (self._last_active is None or self._last_active <= start):
            return 0.0  # exact zero once the last busy moment left the window
        area = self._in_flight * (now - max(self._since, start))
        for second, value in self._buckets:
            lo, hi = max(second, self._origin), min(second + 1.0, self._since)
            if hi > start and hi > lo:
                area += value * (hi - max(lo, start)) / (hi - lo)
        return area / seconds

    def stats(self, now: float, rule: ScalingRule) -> WindowStats:
        """The frozen snapshot :func:`decide` takes, over the rule's two windows."""
        return WindowStats(
            stable=self.average(now, rule.window),
            panic=self.average(now, rule.panic_window),
            in_flight=self._in_flight,
            last_active=self.last_active(now),
        )

    def _advance(self, now: float) -> float:
        if self._origin is None:
            self._origin = self._since = now
            return now
        now = max(now, self._since)
        # Only the last horizon matters; a long-stuck request must not loop for hours.
        t = max(self._since, now - self.horizon - 1.0)
        while self._in_flight and t < now:
            second = math.floor(t)
            end = min(now, second + 1.0)
            area = self._in_flight * (end - t)
            if self._buckets and self._buckets[-1][0] == second:
                area += self._buckets.pop()[1]
            self._buckets.append((second, area))
            t = end
        self._since = now
        while self._buckets and self._buckets[0][0] + 1.0 <= now - self.horizon:
            self._buckets.popleft()
        return now


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Concurrency as seen at one instant: window averages, current count, last busy time."""

    stable: float
    panic: float
    in_flight: int = 0
    last_active: float | None = None


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What :func:`decide` remembers between decisions; build the first with :meth:`start`.

    ``recent`` holds ``(time, desired)`` for the scale-down-delay window, kept strictly
    decreasing in ``desired`` (a value can only be the window's maximum while no later
    value is as large), so its first entry is the maximum.
    """

    desired: int
    last_demand: float
    initializing: bool = False
    panic_started: float | None = None
    last_over_threshold: float | None = None
    recent: tuple[tuple[float, int], ...] = ()
    inactive_since: float | None = None

    @classmethod
    def start(cls, rule: ScalingRule, now: float) -> ScalerState:
        """The state of a model registered at ``now`` with :func:`initial_replicas` replicas."""
        initial = initial_replicas(rule)
        return cls(desired=initial, last_demand=now, initializing=initial > 0)


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """Replicas to converge to, the state for the next call, whether panicking, and why."""

    desired: int
    state: ScalerState
    panic: bool
    reason: str


def effective_target(rule: ScalingRule) -> float:
    """Concurrency per replica to aim for: target (at most container-concurrency) x utilization."""
    total = min(rule.target, rule.container_concurrency or math.inf)
    return max(_TARGET_MIN, total * rule.target_utilization_percentage / 100.0)


def initial_replicas(rule: ScalingRule) -> int:
    """Replicas to start a model with: ``initial-scale`` clamped to ``[min, max]``.

    Knative creates a revision with ``initial-scale`` pods and turns 0 into 1 unless the
    cluster sets ``allow-zero-initial-scale``. The embedded gateway honours 0 (the model
    loads on its first request), so the default rule (min 0, initial 1) boots one warm
    replica that goes to zero after the idle period like any other.
    """
    return _clamp(rule.initial_scale, rule)


def decide(
    stats: WindowStats,
    ready: int,
    state: ScalerState,
    rule: ScalingRule,
    now: float,
    *,
    scale_to_zero_grace: float = 30.0,
) -> ScaleDecision:
    """Decide the replica count for one model; ``ready`` is how many serve requests now.

    Call every tick (about once a second) with ``ScaleDecision.state`` from the last call.
    """
    target = effective_target(rule)
    capacity = max(1, ready)
    want_stable = _ceil(stats.stable / target)
    want_panic = _ceil(stats.panic / target)
    lo = math.floor(capacity / MAX_SCALE_DOWN_RATE)
    hi = math.ceil(capacity * MAX_SCALE_UP_RATE)
    stable = min(max(want_stable, lo), hi)
    panic_count = min(max(want_panic, lo), hi)

    over = want_panic / capacity >= rule.panic_threshold_percentage / 100.0
    started, last_over = state.panic_started, state.last_over_threshold
    if over:
        started, last_over = (now if started is None else started), now
    elif last_over is not None and now - last_over >= rule.window:
        started = last_over = None
    if started is None:
        desired = stable
        notes = [f"stable: {stats.stable:.2f} in flight / {target:g} per replica -> {stable}"]
    else:
        desired = max(stable, panic_count, state.desired)
        notes = [
            # ``started`` is a clock reading (monotonic: seconds since boot), not an age.
            f"panic for {now - started:.1f}s: {stats.panic:.2f} in flight over the panic window"
            f" / {target:g} per replica -> {panic_count}, never below {state.desired}"
        ]
    if stable != want_stable or (started is not None and panic_count != want_panic):
        notes.append(f"rate-limited to [{lo}, {hi}] from {capacity} ready")
    if stats.in_flight and desired < 1:
        desired = 1
        notes.append("a request is waiting")

    recent = state.recent
    if rule.scale_down_delay > 0:
        kept = tuple((t, d) for t, d in recent if now - t < rule.scale_down_delay and d > desired)
        recent = (*kept, (now, desired))
        if kept:
            desired = kept[0][1]
            notes.append(f"held at {desired} by scale-down-delay {rule.scale_down_delay:g}s")

    initial = initial_replicas(rule)
    initializing = state.initializing and ready < initial
    if initializing and desired < initial:
        desired = initial
        notes.append(f"holding initial-scale {initial} until that many are ready")
    clamped = _clamp(desired, rule)
    if clamped != desired:
        desired = clamped
        notes.append(f"clamped to [{rule.min_scale}, {rule.max_scale or 'inf'}]")

    last_demand = now if stats.in_flight else state.last_demand
    if stats.last_active is not None:
        last_demand = max(last_demand, stats.last_active)
    # Knative marks a revision inactive after a stable window without traffic, then waits
    # the longer of the grace period and the pod retention period before removing it.
    inactive_since = None
    if desired == 0 and now - last_demand >= rule.window:
        inactive_since = now if state.inactive_since is None else state.inactive_since
    if desired == 0:
        wait = max(scale_to_zero_grace, rule.scale_to_zero_pod_retention_period)
        due = (last_demand + rule.window if inactive_since is None else inactive_since) + wait
        if now >= due:
            notes.append(f"idle since {last_demand:g}s: scaled to zero")
        elif ready > 0 or state.desired > 0:
            desired = 1
            notes.append(f"idle since {last_demand:g}s: keeping 1 replica until {due:g}s")

    new_state = ScalerState(
        desired=desired,
        last_demand=last_demand,
        initializing=initializing,
        panic_started=started,
        last_over_threshold=last_over,
        recent=recent,
        inactive_since=inactive_since,
    )
    return ScaleDecision(desired, new_state, started is not None, "; ".join(notes))


def _ceil(x: float) -> int:
    # Time-weighted sums pick up float noise (2.0000000001 must not mean 3 replicas).
    return math.ceil(round(x, 9))


def _clamp(count: int, rule: ScalingRule) -> int:
    count = max(count, rule.min_scale)
    return min(count, rule.max_scale) if rule.max_scale else count
