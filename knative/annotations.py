"""Knative's autoscaling annotations: written from a ``ScalingRule``, checked with
Knative's own rules and bounds (the one table ``runtime.spec.knative_bounds``, which the
scaling rule reads too).

``runtime.spec.scaling.ScalingRule`` is the one definition of a model's scaling rule; this
module only spells it the way Knative reads it (``autoscaling.knative.dev/*`` on
``spec.template.metadata.annotations``) and checks the written annotations, and the
pod-spec fields that go with them (``containerConcurrency``, ``timeoutSeconds``), the way
Knative Serving's webhook does (``pkg/apis/autoscaling`` annotation validation plus the
cluster's ``config-autoscaler`` / ``config-defaults``). The check runs on what was
rendered, so a hand-edited manifest or a cluster with tighter limits is caught before
``kubectl`` sends it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from runtime.spec.clusters import KnativeProfile
from runtime.spec.knative_bounds import KNATIVE_BOUNDS
from runtime.spec.scaling import ScalingRule, format_duration, parse_duration

__all__ = [
    "AUTOSCALING",
    "HPA",
    "KPA",
    "Finding",
    "check_annotations",
    "check_pod_limits",
    "scaling_annotations",
]

AUTOSCALING = "autoscaling.knative.dev/"
KPA = "kpa.autoscaling.knative.dev"
HPA = "hpa.autoscaling.knative.dev"

# The KPA's metrics (the HPA class takes any metric name: cpu, memory, custom ones).
_METRICS = {KPA: ("concurrency", "rps")}
_ALGORITHMS = ("linear", "weighted-exponential", "weightedExponential")
# What only the KPA reads.
_KPA_ONLY = ("window", "panic-window-percentage", "panic-threshold-percentage")
# The annotations checked against ``KNATIVE_BOUNDS`` as plain numbers and as durations
# (the scale counts are checked one by one below: their relations matter too).
_NUMBERS = (
    "target",
    "target-utilization-percentage",
    "panic-window-percentage",
    "panic-threshold-percentage",
)
_DURATIONS = ("window", "scale-down-delay", "scale-to-zero-pod-retention-period")
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_KNOWN_KEYS = frozenset(
    AUTOSCALING + k
    for k in (
        "class",
        "metric",
        "target",
        "target-utilization-percentage",
        "min-scale",
        "max-scale",
        "initial-scale",
        "activation-scale",
        "window",
        "panic-window-percentage",
        "panic-threshold-percentage",
        "scale-down-delay",
        "scale-to-zero-pod-retention-period",
        "target-burst-capacity",
        "metric-aggregation-algorithm",
    )
)


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or hazard (``warning``) found in a rendered manifest."""

    model: str
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"model {self.model!r}: field {self.field!r}: {self.message}"


def scaling_annotations(
    rule: ScalingRule, profile: KnativeProfile, *, min_scale: int | None = None
) -> dict[str, str]:
    """The rule as ``autoscaling.knative.dev/*`` annotations (``min_scale`` overrides the
    rule's, for bridge tiers that must stay warm)."""
    low = rule.min_scale if min_scale is None else max(min_scale, rule.min_scale)
    initial = max(rule.initial_scale, low) if min_scale is not None else rule.initial_scale
    values: dict[str, str] = {
        "class": profile.autoscaling_class,
        "metric": profile.metric,
        "target": f"{rule.target:g}",
        "target-utilization-percentage": f"{rule.target_utilization_percentage:g}",
        "min-scale": str(low),
        "initial-scale": str(initial),
        "window": format_duration(rule.window),
        "panic-window-percentage": f"{rule.panic_window_percentage:g}",
        "panic-threshold-percentage": f"{rule.panic_threshold_percentage:g}",
        "scale-down-delay": format_duration(rule.scale_down_delay),
        "scale-to-zero-pod-retention-period": format_duration(
            rule.scale_to_zero_pod_retention_period
        ),
    }
    if rule.max_scale:
        values["max-scale"] = str(rule.max_scale)
    if profile.autoscaling_class == HPA:
        # Knative's HPA class has no panic mode or stable window of its own.
        for key in _KPA_ONLY:
            values.pop(key)
    return {AUTOSCALING + k: v for k, v in values.items()}


def check_annotations(
    model: str, annotations: Mapping[str, str], profile: KnativeProfile
) -> list[Finding]:
    """Knative's rules for the ``autoscaling.knative.dev/*`` annotations (those of its
    webhook's ``ValidateAnnotations``, with the cluster's ``config-autoscaler``), each
    broken rule a :class:`Finding` naming the model and the annotation. What Knative
    accepts but ignores or would surprise is a warning."""
    found: list[Finding] = []
    a = {k: v for k, v in annotations.items() if k.startswith(AUTOSCALING)}

    def bad(key: str, message: str, severity: Literal["error", "warning"] = "error") -> None:
        found.append(Finding(model, AUTOSCALING + key, message, severity))

    for key in a:
        if key not in _KNOWN_KEYS:
            name = key.removeprefix(AUTOSCALING)
            bad(name, "not an annotation Knative's autoscaler knows: it is ignored", "warning")

    cls = a.get(AUTOSCALING + "class", KPA)
    if cls.endswith("autoscaling.knative.dev") and cls not in (KPA, HPA):
        bad("class", f"{cls!r} is not a Knative autoscaler class; allowed: {KPA}, {HPA}")
    metric = a.get(AUTOSCALING + "metric")
    if metric is not None:
        if cls == KPA and metric not in _METRICS[KPA]:
            bad("metric", f"{metric!r} is not a metric of the KPA class; allowed: {_METRICS[KPA]}")
        elif cls == HPA and not metric:
            bad("metric", "the HPA class needs a metric, e.g. cpu or memory")

    def number(key: str) -> float | None:
        raw, bound = a.get(AUTOSCALING + key), KNATIVE_BOUNDS[key]
        if raw is None:
            return None
        integer = bound.kind == "integer"
        try:
            value = float(int(raw)) if integer else float(raw)
        except ValueError:
            bad(key, f"{raw!r} is not {'a whole number' if integer else 'a number'}")
            return None
        if not bound.admits(value):
            bad(key, f"{raw} is out of Knative's bounds {bound.describe()}")
            return None
        return value

    def duration(key: str) -> None:
        raw, bound = a.get(AUTOSCALING + key), KNATIVE_BOUNDS[key]
        if raw is None:
            return
        if not _GO_DURATION.match(raw.strip()):
            bad(key, f"{raw!r} is not a duration; Knative wants units, e.g. '60s' or '1m30s'")
            return
        seconds = parse_duration(raw)
        if not bound.admits(seconds):
            bad(key, f"{raw} is out of Knative's bounds {bound.describe()}")
        elif bound.whole and seconds != int(seconds):
            bad(key, f"{raw} must be whole seconds (Knative has second precision here)")

    for key in _NUMBERS:
        number(key)
    burst = a.get(AUTOSCALING + "target-burst-capacity")
    if burst is not None and not _burst_ok(burst):
        bad("target-burst-capacity", f"{burst!r} must be a number >= 0, or -1 (unlimited)")
    algorithm = a.get(AUTOSCALING + "metric-aggregation-algorithm")
    if cls == KPA and algorithm and algorithm not in _ALGORITHMS:
        bad("metric-aggregation-algorithm", f"{algorithm!r} is not one of {_ALGORITHMS}")
    low = number("min-scale")
    high = number("max-scale")
    initial = number("initial-scale")
    number("activation-scale")
    if low is not None and high is not None and high and high < low:
        bad("max-scale", f"max-scale ({high:g}) must be >= min-scale ({low:g}) or 0 (unbounded)")
    limit = profile.max_scale_limit
    if limit and high is not None:
        if high == 0:
            bad("max-scale", f"0 (unlimited) is refused where max-scale-limit is {limit}")
        elif high > limit:
            bad("max-scale", f"{high:g} exceeds the cluster's max-scale-limit ({limit})")
    if initial == 0 and not profile.allow_zero_initial_scale:
        bad(
            "initial-scale",
            "initial-scale 0 is accepted only where knative-serving/config-autoscaler has "
            "allow-zero-initial-scale: 'true'; Knative rejects these revisions otherwise. "
            "Set it on the cluster, then knative.allow_zero_initial_scale: true in the "
            "cluster profile",
            "warning",
        )
    for key in _DURATIONS:
        duration(key)
    if cls == HPA:
        ignored = [k for k in _KPA_ONLY if AUTOSCALING + k in a]
        if ignored:
            bad(ignored[0], f"the HPA class ignores {', '.join(ignored)}", "warning")
        if low == 0 or low is None:
            bad("min-scale", "the HPA class never scales to zero (at least 1 runs)", "warning")
    return found


def _burst_ok(raw: str) -> bool:
    try:
        value = float(raw)
    except ValueError:
        return False
    return value >= 0 or value == -1


def check_pod_limits(
    model: str, container_concurrency: int | None, timeout_seconds: int | None, p: KnativeProfile
) -> list[Finding]:
    """``containerConcurrency`` and ``timeoutSeconds`` within the cluster's defaults."""
    found = []
    cc, cap = container_concurrency, p.container_concurrency_max_limit
    if cc is not None and not 0 <= cc <= cap:
        found.append(
            Finding(model, "spec.template.spec.containerConcurrency", f"{cc} not in 0..{cap}")
        )
    t, tmax = timeout_seconds, p.max_revision_timeout_seconds
    if t is not None and not 0 <= t <= tmax:  # 0: the cluster's default
        found.append(
            Finding(
                model,
                "spec.template.spec.timeoutSeconds",
                f"{t} not in 0..{tmax} (max-revision-timeout-seconds)",
            )
        )
    return found
