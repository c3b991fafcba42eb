"""Knative's autoscaling rules, each with bad values: every violation names the model
and the annotation (or pod-spec field)."""

from __future__ import annotations

import pytest

from knative.annotations import (
    AUTOSCALING,
    HPA,
    check_annotations,
    check_pod_limits,
    scaling_annotations,
)
from runtime.spec.clusters import KnativeProfile
from runtime.spec.scaling import ScalingRule

PROFILE = KnativeProfile(allow_zero_initial_scale=True)


def good() -> dict[str, str]:
    return scaling_annotations(ScalingRule(), PROFILE)


def test_rendered_rule_passes_knatives_rules() -> None:
    rule = ScalingRule.model_validate(
        {
            "min-scale": 1,
            "max-scale": 5,
            "initial-scale": 2,
            "target": 2.5,
            "window": "1m30s",
            "scale-down-delay": "15m",
            "scale-to-zero-pod-retention-period": "90s",
        }
    )
    annotations = scaling_annotations(rule, PROFILE)
    assert annotations[AUTOSCALING + "window"] == "90s"
    assert annotations[AUTOSCALING + "scale-down-delay"] == "900s"
    assert annotations[AUTOSCALING + "target"] == "2.5"
    assert annotations[AUTOSCALING + "max-scale"] == "5"
    assert check_annotations("m", annotations, PROFILE) == []


def test_unbounded_max_scale_is_left_out() -> None:
    assert AUTOSCALING + "max-scale" not in good()


def test_bridge_min_scale_keeps_the_bridge_warm() -> None:
    annotations = scaling_annotations(ScalingRule(), PROFILE, min_scale=1)
    assert annotations[AUTOSCALING + "min-scale"] == "1"
    assert annotations[AUTOSCALING + "initial-scale"] == "1"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("class", "foo.autoscaling.knative.dev", "not a Knative autoscaler class"),
        ("metric", "cpu", "not a metric of the KPA class"),
        ("target", "0", "out of Knative's bounds 0.01"),
        ("target", "lots", "not a number"),
        ("target-utilization-percentage", "101", "out of Knative's bounds 1..100"),
        ("target-utilization-percentage", "0.5", "out of Knative's bounds 1..100"),
        ("min-scale", "-1", "out of Knative's bounds"),
        ("min-scale", "1.5", "not a whole number"),
        ("max-scale", "x", "not a whole number"),
        ("initial-scale", "-2", "out of Knative's bounds"),
        ("activation-scale", "0", "out of Knative's bounds 1"),
        ("window", "5s", "out of Knative's bounds 6s..3600s"),
        ("window", "2h", "out of Knative's bounds"),
        ("window", "60", "Knative wants units"),
        ("window", "6500ms", "whole seconds"),
        ("panic-window-percentage", "0.5", "out of Knative's bounds 1..100"),
        ("panic-window-percentage", "101", "out of Knative's bounds 1..100"),
        ("panic-threshold-percentage", "100", "out of Knative's bounds 110..1000"),
        ("panic-threshold-percentage", "1001", "out of Knative's bounds 110..1000"),
        ("scale-down-delay", "61m", "out of Knative's bounds 0s..3600s"),
        ("scale-down-delay", "-1s", "not a duration"),
        ("scale-down-delay", "1500ms", "whole seconds"),
        ("scale-to-zero-pod-retention-period", "2h", "out of Knative's bounds"),
        ("scale-to-zero-pod-retention-period", "soon", "not a duration"),
        ("target-burst-capacity", "-2", "must be a number >= 0, or -1"),
        ("metric-aggregation-algorithm", "median", "is not one of"),
    ],
)
def test_each_rule_rejects_bad_values(key: str, value: str, message: str) -> None:
    annotations = {**good(), AUTOSCALING + key: value}
    found = check_annotations("smollm2", annotations, PROFILE)
    assert found, f"{key}={value} was accepted"
    assert any(
        f.model == "smollm2" and f.field == AUTOSCALING + key and message in f.message
        for f in found
    ), [str(f) for f in found]
    assert all(f.severity == "error" for f in found)


def test_what_knative_accepts_passes() -> None:
    """Knative is not stricter than this: these are accepted as its webhook accepts them."""
    annotations = {
        **good(),
        AUTOSCALING + "scale-to-zero-pod-retention-period": "1500ms",  # no precision rule
        AUTOSCALING + "target-burst-capacity": "-1",
        AUTOSCALING + "metric-aggregation-algorithm": "weighted-exponential",
        AUTOSCALING + "class": "custom.example.com",  # another autoscaler's class
        AUTOSCALING + "metric": "queue-length",  # ... with its own metric
    }
    assert check_annotations("m", annotations, PROFILE) == []


def test_unknown_annotation_is_a_warning() -> None:
    (finding,) = check_annotations("m", {**good(), AUTOSCALING + "stable-window": "60s"}, PROFILE)
    assert finding.severity == "warning" and "not an annotation" in finding.message


def test_max_below_min() -> None:
    annotations = {**good(), AUTOSCALING + "min-scale": "3", AUTOSCALING + "max-scale": "2"}
    (finding,) = check_annotations("m", annotations, PROFILE)
    assert finding.field == AUTOSCALING + "max-scale" and "must be >= min-scale (3)" in str(finding)


def test_max_scale_limit_of_the_cluster() -> None:
    limited = KnativeProfile(allow_zero_initial_scale=True, max_scale_limit=10)
    assert check_annotations("m", good(), limited) == []  # unset: Knative's default applies
    unbounded = check_annotations("m", {**good(), AUTOSCALING + "max-scale": "0"}, limited)
    assert [f.field for f in unbounded] == [AUTOSCALING + "max-scale"]
    over = check_annotations("m", {**good(), AUTOSCALING + "max-scale": "11"}, limited)
    assert "exceeds the cluster's max-scale-limit" in over[0].message


def test_zero_initial_scale_warns_naming_the_flag() -> None:
    annotations = {**good(), AUTOSCALING + "initial-scale": "0"}
    (finding,) = check_annotations("m", annotations, KnativeProfile())
    assert finding.severity == "warning"
    assert "allow-zero-initial-scale" in finding.message
    assert check_annotations("m", annotations, PROFILE) == []


def test_hpa_class_rules() -> None:
    hpa = KnativeProfile(allow_zero_initial_scale=True, autoscaling_class=HPA, metric="cpu")
    annotations = scaling_annotations(ScalingRule.model_validate({"min-scale": 1}), hpa)
    assert AUTOSCALING + "window" not in annotations
    assert check_annotations("m", annotations, hpa) == []
    empty = {**annotations, AUTOSCALING + "metric": ""}
    assert "needs a metric" in check_annotations("m", empty, hpa)[0].message
    to_zero = {**annotations, AUTOSCALING + "min-scale": "0"}
    (warning,) = check_annotations("m", to_zero, hpa)
    assert warning.severity == "warning" and "never scales to zero" in warning.message
    windowed = {**annotations, AUTOSCALING + "window": "60s"}
    (ignored,) = check_annotations("m", windowed, hpa)
    assert ignored.severity == "warning" and "ignores window" in ignored.message


@pytest.mark.parametrize(
    ("cc", "timeout", "field"),
    [
        (1001, 300, "spec.template.spec.containerConcurrency"),
        (-1, 300, "spec.template.spec.containerConcurrency"),
        (4, 601, "spec.template.spec.timeoutSeconds"),
        (4, -1, "spec.template.spec.timeoutSeconds"),
    ],
)
def test_pod_limits(cc: int, timeout: int, field: str) -> None:
    (finding,) = check_pod_limits("m", cc, timeout, PROFILE)
    assert finding.field == field and finding.model == "m"
    assert check_pod_limits("m", 4, 300, PROFILE) == []
