"""The manager's answer for one model, with its reasons: a :class:`PlacementDecision` holds the
:class:`~runtime.spec.placement.Placement` chosen and every :class:`Candidate` considered
(predicted p95, tokens/s, cost, and why each was chosen, a bridge, or rejected).
Made by ``runtime.placement.policy``, shown by ``edgeinfer plan`` and ``/admin/models``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runtime.spec.placement import Placement, Tier

__all__ = ["Candidate", "PlacementDecision"]


@dataclass(frozen=True)
class Candidate:
    """One runtime x device considered for a model, and what became of it."""

    tier: Tier
    source: str  # "measured", "estimated" or "none" (no profile)
    predicted_p95_ms: float | None = None
    cold_start_ms: float | None = None
    tokens_per_s: float | None = None
    replicas: int = 0
    cost_per_hour: float | None = None
    meets_goal: bool = False
    verdict: str = "rejected"  # "chosen", "bridge" or "rejected"
    reason: str = ""
    evict: tuple[str, ...] = ()
    gpu: int | None = None
    memory_mib: float = 0.0
    fits: bool = True  # False: the hardware cannot hold it (no GPU room, no memory)
    solo_p95_ms: float | None = None  # warm p95 of one request alone (as a bridge)
    # What one replica costs per hour kept warm (a warm minimum or a warm bridge); for a
    # model in the WASM host, what it costs at zero, since it holds no replica.
    warm_cost_per_hour: float | None = None
    # The keep-alive the price assumed when the manager chose a shorter one than the
    # rule's (``runtime.placement.pricing.choose_keep_alive``); None: the rule's.
    keep_alive_s: float | None = None

    @property
    def key(self) -> str:
        return (
            self.tier.key if self.tier.cluster is None else f"{self.tier.key}@{self.tier.cluster}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.key,
            "runtime": self.tier.runtime.value,
            "device": self.tier.device.value,
            "cluster": self.tier.cluster,
            "profile": self.source,
            "predicted_p95_ms": _round(self.predicted_p95_ms),
            "cold_start_ms": _round(self.cold_start_ms),
            "tokens_per_s": _round(self.tokens_per_s),
            "replicas": self.replicas,
            "cost_per_hour": None if self.cost_per_hour is None else round(self.cost_per_hour, 5),
            "meets_goal": self.meets_goal,
            "verdict": self.verdict,
            "reason": self.reason,
            "evict": list(self.evict),
            "gpu": self.gpu,  # which GPU of this host, when placed on one
            "memory_mib": round(self.memory_mib, 1),  # what it holds there (GPU or host)
            "keep_alive_s": self.keep_alive_s,
        }


@dataclass(frozen=True)
class PlacementDecision:
    model: str
    placement: Placement
    candidates: tuple[Candidate, ...]
    goal_met: bool
    load_rps: float
    warm_minimum: int = 0
    decided_at: float = 0.0

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.verdict == "chosen"), None)

    @property
    def reason(self) -> str:
        return self.placement.reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tiers": [
                {
                    "tier": t.key,
                    "role": t.role.value,
                    "cluster": t.cluster,
                    "min_scale": t.min_scale,
                    "keep_alive_s": t.keep_alive_s,
                }
                for t in self.placement.tiers
            ],
            "goal_met": self.goal_met,
            "load_rps": round(self.load_rps, 3),
            "warm_minimum": self.warm_minimum,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def _round(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else round(x, 1)
