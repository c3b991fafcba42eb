"""The scaling rule: Knative's names, bounds and relations, as a table of cases."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.spec.scaling import ScalingRule, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        (15, 15.0),
        ("0", 0.0),
        ("2.5s", 2.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["60", "1x", "s", "-5s", "1m 30s", True, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("seconds", "text"), [(60.0, "60s"), (0.5, "500ms"), (0, "0s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_defaults_are_knatives() -> None:
    rule = ScalingRule()
    assert (rule.min_scale, rule.max_scale, rule.initial_scale) == (0, 0, 1)
    assert rule.target == 100 and rule.container_concurrency == 0
    assert rule.window == 60 and rule.panic_window == 6.0
    assert rule.panic_threshold_percentage == 200 and rule.timeout == 300


def test_knative_names_are_the_field_names() -> None:
    rule = ScalingRule.model_validate(
        {
            "min-scale": 1,
            "max-scale": 3,
            "window": "2m",
            "scale-down-delay": "30s",
            "scale-to-zero-pod-retention-period": "1m",
            "container-concurrency": 4,
            "target": 2,
        }
    )
    assert rule.window == 120 and rule.scale_down_delay == 30
    assert rule.scale_to_zero_pod_retention_period == 60
    dumped = rule.model_dump(by_alias=True)
    assert dumped["min-scale"] == 1 and dumped["container-concurrency"] == 4


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"window": "5s"}, "greater than or equal to 6"),
        ({"window": "2h"}, "less than or equal to 3600"),
        ({"window": "6500ms"}, "whole seconds"),
        ({"min-scale": 3, "max-scale": 2}, "max-scale (2) must be >= min-scale (3)"),
        ({"min-scale": -1}, "greater than or equal to 0"),
        ({"panic-window-percentage": 0.5}, "greater than or equal to 1"),
        ({"panic-threshold-percentage": 100}, "greater than or equal to 110"),
        ({"panic-threshold-percentage": 1001}, "less than or equal to 1000"),
        ({"container-concurrency": 1001}, "less than or equal to 1000"),
        ({"target": 0}, "greater than or equal to 0.01"),
        ({"initial-scale": 5, "max-scale": 2}, "initial-scale (5) must be <= max-scale (2)"),
        ({"scale-down-delay": "2h"}, "less than or equal to 3600"),
        ({"timeout": "11m"}, "less than or equal to 600"),
        ({"timeout": "0s"}, "greater than 0"),
        ({"windw": "60s"}, "Extra inputs are not permitted"),
    ],
)
def test_rule_bounds(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ScalingRule.model_validate(values)
    assert fragment in str(info.value)


def test_target_above_the_hard_limit_is_allowed() -> None:
    # Knative caps the effective target at container-concurrency rather than refusing.
    rule = ScalingRule.model_validate({"container-concurrency": 4})
    assert rule.target == 100 and rule.container_concurrency == 4


def test_max_scale_zero_means_unbounded() -> None:
    assert ScalingRule.model_validate({"min-scale": 5, "max-scale": 0}).max_scale == 0
