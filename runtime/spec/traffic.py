"""Traffic control's vocabulary: request priority classes, and model aliases (weighted
targets, a shadow share and failover) as a config file writes them (``aliases:``).

One place for these: the gateway routes by them, the queue orders by them and the
Knative rendering turns an alias into a Service's traffic split.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Priority"]


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
