"""runtime.spec.traffic: aliases are validated with the config (names free, every
model they name a model of the config, weights not all 0)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from runtime.spec.model import ModelConfig

MODELS = [
    {"name": n, "task": "embedding", "endpoint": "http://127.0.0.1:9"} for n in ("a", "b", "c")
]


def config(*aliases: dict[str, Any]) -> ModelConfig:
    return ModelConfig.model_validate({"models": MODELS, "aliases": list(aliases)})


def test_a_valid_alias() -> None:
    cfg = config(
        {
            "name": "chat",
            "targets": [{"model": "a", "weight": 9}, {"model": "b", "weight": 1}],
            "shadow": {"model": "c", "percent": 5},
            "failover": ["c", "a"],
            "stall_seconds": 2,
        }
    )
    alias = cfg.alias("chat")
    assert alias is not None and alias.order == ["a", "b", "c"]
    assert cfg.alias("a") is None


BAD = [
    ({"name": "a", "targets": [{"model": "b", "weight": 1}]}, "is a model's"),
    ({"name": "x", "targets": [{"model": "z", "weight": 1}]}, "'z' is not a model"),
    ({"name": "x", "targets": [{"model": "a", "weight": 0}]}, "must not all be 0"),
    ({"name": "x", "targets": [{"model": "a", "weight": 1}], "failover": ["x"]}, "not a model"),
    ({"name": "X y", "targets": [{"model": "a", "weight": 1}]}, "not a valid name"),
    (
        {
            "name": "x",
            "targets": [{"model": "a", "weight": 1}],
            "shadow": {"model": "q", "percent": 1},
        },
        "'q' is not a model",
    ),
    ({"name": "x", "targets": [{"model": "a", "weight": 1}, {"model": "a", "weight": 2}]}, "twice"),
]


@pytest.mark.parametrize(("alias", "words"), BAD)
def test_bad_aliases_are_refused(alias: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        config(alias)
    assert words in str(caught.value)


def test_an_alias_name_used_twice_is_refused() -> None:
    alias = {"name": "x", "targets": [{"model": "a", "weight": 1}]}
    with pytest.raises(ValidationError, match="used twice"):
        config(alias, alias)
