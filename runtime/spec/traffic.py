"""Traffic control's vocabulary: request priority classes, and model aliases (weighted
targets, a shadow share and failover) as a config file writes them (``aliases:``).

One place for these: the gateway routes by them, the queue orders by them and the
Knative rendering turns an alias into a Service's traffic split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

from pydantic import Field, model_validator

from runtime.spec.frozen import Frozen

__all__ = ["Alias", "AliasTarget", "Priority", "Shadow", "check_aliases"]


class Priority(StrEnum):
    """How much a request matters when a model is saturated, highest first: the queue
    serves ``critical`` before ``standard`` before ``sheddable``; a saturated model
    refuses ``sheddable`` requests at once, and a ``critical`` one may take the place of
    a queued ``sheddable`` one."""

    CRITICAL = "critical"
    STANDARD = "standard"
    SHEDDABLE = "sheddable"

    @property
    def rank(self) -> int:
        """0 for the class served first."""
        return _RANKS[self]


_RANKS = {Priority.CRITICAL: 0, Priority.STANDARD: 1, Priority.SHEDDABLE: 2}


class AliasTarget(Frozen):
    """One model an alias sends a share of its requests to: ``weight`` of the sum of
    the alias's weights (a canary at 5 of 100, then 50, then 100)."""

    model: str
    weight: int = Field(ge=0, le=1_000_000)


class Shadow(Frozen):
    """A copy of ``percent`` of the alias's requests goes to ``model`` too; its answers
    are discarded and only measured (status, latency). At most ``max_in_flight`` copies
    run at once (more are skipped), each as a sheddable request, so a shadow never takes
    a slot the real traffic needs."""

    model: str
    percent: float = Field(gt=0, le=100)
    max_in_flight: int = Field(4, ge=1, le=1024)


class Alias(Frozen):
    """A name clients call that is not a model: ``targets`` split its requests by
    weight; ``failover`` lists models tried, in order, after the chosen target and the
    alias's other targets when one answers 5xx (or, with ``stall_seconds``, sends no
    first byte of its answer in that long); a request is retried once, on the next
    model of that order, and never after a byte of its answer reached the client."""

    name: str
    targets: list[AliasTarget] = Field(min_length=1, max_length=16)
    shadow: Shadow | None = None
    failover: list[str] = Field(default_factory=list, max_length=8)
    stall_seconds: float | None = Field(None, gt=0, le=3600)

    @model_validator(mode="after")
    def _weights(self) -> Alias:
        if not sum(t.weight for t in self.targets):
            raise ValueError(f"alias {self.name!r}: the targets' weights must not all be 0")
        names = [t.model for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"alias {self.name!r}: a target model is listed twice")
        return self

    @property
    def order(self) -> list[str]:
        """Every model the alias may send to, for failover: targets, then failover."""
        return list(dict.fromkeys([*(t.model for t in self.targets), *self.failover]))


def check_aliases(aliases: Sequence[Alias], models: set[str], name: str) -> None:
    """ValueError unless every alias's name matches ``name`` (the model name pattern)
    and is free (no model, no other alias), and every model it names is a model."""
    seen: set[str] = set()
    for alias in aliases:
        if not re.fullmatch(name, alias.name):
            raise ValueError(f"alias {alias.name!r}: not a valid name (as a model's)")
        if alias.name in models or alias.name in seen:
            raise ValueError(f"alias {alias.name!r}: the name is a model's or used twice")
        seen.add(alias.name)
        shadow = [alias.shadow.model] if alias.shadow else []
        for model in [*alias.order, *shadow]:
            if model not in models:
                raise ValueError(
                    f"alias {alias.name!r}: {model!r} is not a model of this config "
                    "(an alias names models, not other aliases)"
                )
