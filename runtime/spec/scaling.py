"""The scaling rule: Knative's autoscaling knobs, with Knative's names, bounds and meaning.

The bounds themselves are one table, ``runtime.spec.knative_bounds.KNATIVE_BOUNDS``,
which the Knative annotation checker reads too. A rule means the same on an edge box
(the embedded supervisor) and in a cluster (``autoscaling.knative.dev/*`` annotations).
Names and bounds follow Knative Serving's documentation and its ``autoscaling``
validation:

* ``min-scale`` / ``max-scale`` / ``initial-scale``: replica counts; ``max-scale`` 0
  means unbounded, otherwise it must be >= ``min-scale``.
* ``target``: soft concurrency target per replica (> 0, at least 0.01).
* ``target-utilization-percentage``: 1..100, the share of ``target`` the autoscaler aims
  for (Knative's ``container-concurrency-target-percentage``, default 70).
* ``container-concurrency``: hard limit of requests in flight per replica, 0..1000
  (0 = unlimited).
* ``window``: stable window, 6s..1h, whole seconds.
* ``panic-window-percentage``: 1..100 (% of the stable window).
* ``panic-threshold-percentage``: 110..1000 (% of target that triggers panic mode).
* ``scale-down-delay``: 0s..1h; ``scale-to-zero-pod-retention-period``: 0s..1h.
* ``timeout``: request timeout (Knative's ``timeoutSeconds``), 1s..600s.

Durations are Go duration strings as Knative writes them (``"60s"``, ``"1m30s"``,
``"500ms"``) or plain numbers of seconds.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from runtime.spec.frozen import Frozen
from runtime.spec.knative_bounds import KNATIVE_BOUNDS

__all__ = ["ScalingRule", "format_duration", "parse_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: Any) -> float:
    """Seconds in a Go duration string (``"1m30s"``) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '60s' or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as '60s' or a number of seconds")
    text = value.strip()
    if text in {"0", ""}:
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{value!r} is not a duration; write it like '60s', '1m30s' or '500ms'")
    return total


def format_duration(seconds: float) -> str:
    """The Go duration string Knative expects for a number of seconds."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _knob(default: float, name: str, description: str | None = None) -> Any:
    """A field named and bounded as Knative names and bounds it (``KNATIVE_BOUNDS``)."""
    b = KNATIVE_BOUNDS[name]
    gt, ge = (b.low, None) if b.low_exclusive else (None, b.low)
    return Field(default, alias=name, gt=gt, ge=ge, le=b.high, description=description)


class ScalingRule(Frozen):
    """Per-model autoscaling, Knative KPA semantics. Field aliases are Knative's names;
    bounds are Knative's, from ``runtime.spec.knative_bounds``."""

    min_scale: int = _knob(0, "min-scale")
    max_scale: int = _knob(0, "max-scale", "0 means unbounded")
    initial_scale: int = _knob(1, "initial-scale")
    target: float = _knob(100.0, "target")
    target_utilization_percentage: float = _knob(70.0, "target-utilization-percentage")
    container_concurrency: int = _knob(0, "container-concurrency")
    window: Duration = _knob(60.0, "window")
    panic_window_percentage: float = _knob(10.0, "panic-window-percentage")
    panic_threshold_percentage: float = _knob(200.0, "panic-threshold-percentage")
    scale_down_delay: Duration = _knob(0.0, "scale-down-delay")
    scale_to_zero_pod_retention_period: Duration = _knob(0.0, "scale-to-zero-pod-retention-period")
    timeout: Duration = _knob(300.0, "timeout")

    @model_validator(mode="after")
    def _check_relations(self) -> ScalingRule:
        for name, seconds in (("window", self.window), ("scale-down-delay", self.scale_down_delay)):
            if KNATIVE_BOUNDS[name].whole and seconds != int(seconds):
                raise ValueError(f"{name} must be whole seconds, got {seconds}s")
        if self.max_scale and self.max_scale < self.min_scale:
            raise ValueError(
                f"max-scale ({self.max_scale}) must be >= min-scale ({self.min_scale}) "
                "or 0 for unbounded"
            )
        if self.max_scale and self.initial_scale > self.max_scale:
            raise ValueError(
                f"initial-scale ({self.initial_scale}) must be <= max-scale ({self.max_scale})"
            )
        return self

    @property
    def panic_window(self) -> float:
        """The panic window in seconds (a percentage of the stable window)."""
        return self.window * self.panic_window_percentage / 100.0
