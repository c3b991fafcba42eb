"""Knative's bounds for its autoscaling knobs, stated once.

Both the scaling rule (``runtime.spec.scaling.ScalingRule``, which refuses a config
outside them) and the annotation checker (``knative.annotations``, which refuses a
rendered or hand-edited manifest outside them) read this table, so a bound cannot mean
one thing on an edge box and another in a cluster. The values follow Knative Serving's
``pkg/apis/autoscaling`` annotation validation and its ``config-autoscaler`` defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DURATION_MAX", "KNATIVE_BOUNDS", "Bound"]

# Knative caps every autoscaling duration (window, delays, retention) at one hour.
DURATION_MAX = 3600.0


@dataclass(frozen=True)
class Bound:
    """The values Knative accepts for one knob: ``low`` (inclusive unless
    ``low_exclusive``) up to ``high`` (inclusive; None: no upper bound). ``kind`` says
    how the value is written: a whole number, a number, or a Go duration (seconds here);
    ``whole`` durations must be whole seconds."""

    low: float
    high: float | None
    kind: Literal["integer", "number", "duration"]
    whole: bool = False
    low_exclusive: bool = False

    def describe(self) -> str:
        """The range as people write it (``1..100``, ``0.01 or more``, ``6s..3600s``,
        ``over 0s..600s`` where the low end is excluded)."""
        unit = "s" if self.kind == "duration" else ""
        low = f"{'over ' if self.low_exclusive else ''}{self.low:g}{unit}"
        if self.high is None:
            return f"{low} or more"
        return f"{low}..{self.high:g}{unit}"

    def admits(self, value: float) -> bool:
        """Whether ``value`` (seconds, for a duration) is within the bound."""
        above_low = value > self.low if self.low_exclusive else value >= self.low
        return above_low and (self.high is None or value <= self.high)


# Keyed by Knative's name for the knob (the ``autoscaling.knative.dev/`` suffix, or the
# pod-spec field's kebab-case name for ``container-concurrency`` and ``timeout``).
KNATIVE_BOUNDS: dict[str, Bound] = {
    "min-scale": Bound(0, None, "integer"),
    "max-scale": Bound(0, None, "integer"),  # 0: unbounded
    "initial-scale": Bound(0, None, "integer"),
    "activation-scale": Bound(1, None, "integer"),
    "target": Bound(0.01, None, "number"),
    "target-utilization-percentage": Bound(1, 100, "number"),
    "panic-window-percentage": Bound(1, 100, "number"),
    "panic-threshold-percentage": Bound(110, 1000, "number"),
    "window": Bound(6, DURATION_MAX, "duration", whole=True),
    "scale-down-delay": Bound(0, DURATION_MAX, "duration", whole=True),
    "scale-to-zero-pod-retention-period": Bound(0, DURATION_MAX, "duration"),
    # Pod-spec fields: Knative's defaults; a cluster's config-defaults may lower them.
    "container-concurrency": Bound(0, 1000, "integer"),
    "timeout": Bound(0, 600, "duration", low_exclusive=True),
}
