"""Knative's bounds are one table (``runtime.spec.knative_bounds``): the scaling rule and
the annotation checker refuse and accept the same values at every edge of it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from knative.annotations import AUTOSCALING, check_annotations, scaling_annotations
from runtime.spec.clusters import KnativeProfile
from runtime.spec.knative_bounds import KNATIVE_BOUNDS, Bound
from runtime.spec.scaling import ScalingRule, format_duration

PROFILE = KnativeProfile(allow_zero_initial_scale=True)
RULE_KNOBS = {f.alias for f in ScalingRule.model_fields.values()}
ANNOTATED = set(scaling_annotations(ScalingRule(max_scale=3), PROFILE)) | {
    AUTOSCALING + "activation-scale"
}


def edges(bound: Bound) -> tuple[list[float], list[float]]:
    """Values just outside the bound, and its own edges (inside)."""
    step = 1.0 if bound.kind != "number" or bound.low >= 1 else bound.low / 2
    outside = [bound.low if bound.low_exclusive else bound.low - step]
    inside = [bound.low + 1 if bound.low_exclusive else bound.low]
    if bound.high is not None:
        outside.append(bound.high + 1)
        inside.append(bound.high)
    return outside, inside


def written(bound: Bound, value: float) -> str:
    if bound.kind == "duration":
        return format_duration(value)
    return str(int(value)) if bound.kind == "integer" else f"{value:g}"


def rule_accepts(key: str, value: float) -> bool:
    try:
        ScalingRule.model_validate({key: value})
    except ValidationError:
        return False
    return True


def checker_accepts(key: str, value: str) -> bool:
    annotations = {**scaling_annotations(ScalingRule(), PROFILE), AUTOSCALING + key: value}
    found = check_annotations("m", annotations, PROFILE)
    return not [f for f in found if f.severity == "error"]


def test_every_bound_is_read_by_the_rule_or_the_checker() -> None:
    for key in KNATIVE_BOUNDS:
        assert key in RULE_KNOBS or AUTOSCALING + key in ANNOTATED, key


def test_every_rule_knob_and_checked_annotation_has_a_bound() -> None:
    assert RULE_KNOBS <= set(KNATIVE_BOUNDS)
    numeric = {k.removeprefix(AUTOSCALING) for k in ANNOTATED} - {"class", "metric"}
    assert numeric <= set(KNATIVE_BOUNDS)


@pytest.mark.parametrize("key", sorted(KNATIVE_BOUNDS))
def test_rule_and_checker_agree_at_each_edge(key: str) -> None:
    bound = KNATIVE_BOUNDS[key]
    outside, inside = edges(bound)
    for value in outside:
        if key in RULE_KNOBS:
            assert not rule_accepts(key, value), (key, value)
        if AUTOSCALING + key in ANNOTATED:
            assert not checker_accepts(key, written(bound, value)), (key, value)
    for value in inside:
        if key in RULE_KNOBS:
            assert rule_accepts(key, value), (key, value)
        if AUTOSCALING + key in ANNOTATED:
            assert checker_accepts(key, written(bound, value)), (key, value)


def test_whole_seconds_mean_the_same_on_both_sides() -> None:
    for key, bound in KNATIVE_BOUNDS.items():
        if bound.kind != "duration" or key not in RULE_KNOBS:
            continue
        value = bound.low + 6.5 if bound.high is None else min(bound.low + 6.5, bound.high - 0.5)
        assert rule_accepts(key, value) is not bound.whole, key
        if AUTOSCALING + key in ANNOTATED:
            assert checker_accepts(key, written(bound, value)) is not bound.whole, key
