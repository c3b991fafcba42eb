"""Ollama's keep_alive as seconds: numbers, Go durations, for ever, and refusals."""

from __future__ import annotations

import math

import pytest

from runtime.api.ollama import keep_alive_seconds
from runtime.errors import BadInput


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("0s", 0.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-1m", math.inf),
    ],
)
def test_keep_alive_in_seconds(value: object, seconds: float) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize(
    "value", [True, None, "", "soon", "5 minutes", "5d", "m5", "1h-30m", [], {}, "9" * 100 + "h"]
)
def test_what_is_not_a_duration_is_bad_input_naming_the_field(value: object) -> None:
    with pytest.raises(BadInput, match="keep_alive"):
        keep_alive_seconds(value)
