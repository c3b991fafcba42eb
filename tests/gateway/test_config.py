"""The ``gateway:`` section: each problem one line naming the file, the section, the
field and what is allowed there (the project's one wording, ``runtime.errors``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig, gateway_config
from runtime.errors import ConfigError
from runtime.spec.model import ModelConfig


def config(gateway: dict[str, Any]) -> ModelConfig:
    model = {"name": "m", "task": "embedding", "endpoint": "http://127.0.0.1:1"}
    return ModelConfig.model_validate(
        {"models": [model], "gateway": gateway, "source": "/x/c.yaml"}
    )


@pytest.mark.parametrize(
    ("section", "lines"),
    [
        (
            {"max_queue": -1},
            ["/x/c.yaml: gateway: field 'max_queue': Input should be greater than or equal to 0"],
        ),
        (
            {"server": {"keep_alive_seconds": 0}},
            ["/x/c.yaml: gateway: field 'server.keep_alive_seconds': Input should be greater"],
        ),
        (
            {"tick_secs": 1, "max_queue": "many"},
            [
                "/x/c.yaml: gateway: field 'max_queue': Input should be a valid integer",
                "/x/c.yaml: gateway: field 'tick_secs': Extra inputs are not permitted",
            ],
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_field(
    section: dict[str, Any], lines: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        gateway_config(config(section))
    got = sorted(info.value.message.splitlines())
    assert len(got) == len(lines)
    for line, want in zip(got, sorted(lines), strict=True):
        assert line.startswith(want), line


def test_a_valid_section_is_read_and_frozen() -> None:
    got = gateway_config(config({"max_queue": 7}))
    assert isinstance(got, GatewayConfig) and got.max_queue == 7
    with pytest.raises(ValueError, match="frozen"):
        got.max_queue = 8  # type: ignore[misc]
