"""Covering a cold start that alone breaks a model's latency goal (pure): a bridge tier
that starts in time, or else the cheaper of a warm bridge and a warm primary replica;
and what that cover adds to a candidate's price when the policy compares them."""

from __future__ import annotations

from dataclasses import replace

from runtime.placement.candidates import in_host
from runtime.placement.policy_config import PolicyConfig
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Device, Tier, TierRole
from runtime.spec.placement_decision import Candidate

__all__ = ["cover_cold_start", "cover_cost"]


def cover_cost(spec: ModelSpec, c: Candidate, cands: list[Candidate], cfg: PolicyConfig) -> float:
    """What covering ``c``'s cold start would add per hour as the primary: nothing when
    it starts in time (a model in the WASM host does) or a bridge starts from zero; a
    warm bridge's hour, or the rest of the hour of one warm replica of ``c``."""
    if spec.scaling.min_scale > 0 or not cfg.cover_cold_starts or c.cold_start_ms is None:
        return 0.0
    if c.cold_start_ms + (c.predicted_p95_ms or 0.0) <= spec.latency.p95_ms:
        return 0.0
    bridge, warm, _ = _cold_start_cover(spec, c, cands, cfg)
    if bridge is not None:
        return (bridge.warm_cost_per_hour or 0.0) if warm else 0.0
    return max(0.0, (c.warm_cost_per_hour or 0.0) - (c.cost_per_hour or 0.0) / max(1, c.replicas))


def cover_cold_start(
    spec: ModelSpec,
    best: Candidate,
    cands: list[Candidate],
    config: PolicyConfig,
    why: str,
) -> tuple[Candidate, list[Tier], list[Candidate], int, str]:
    """For a model that scales to zero: (chosen, tiers, candidates, warm minimum, why)
    once a cold start that alone breaks the goal is covered (a bridge tier or a warm
    primary replica, :func:`_cold_start_cover`) or, as configured, left alone."""
    goal = spec.latency.p95_ms
    tiers = [best.tier]
    assert best.cold_start_ms is not None
    first = best.cold_start_ms + (best.predicted_p95_ms or 0.0)
    if first <= goal:
        return best, tiers, cands, 0, why
    if in_host(best.tier, config):
        # An instance in the warm host is the fastest start there is: no warm replica
        # or bridge would answer sooner (and the host holds no replicas to keep warm).
        return best, tiers, cands, 0, why
    if not config.cover_cold_starts:
        why += (
            f"; cold start {best.cold_start_ms:.0f} ms alone breaks the goal: left to "
            "scale to zero as configured (manager.cover_cold_starts: false)"
        )
        return replace(best, reason=why), tiers, cands, 0, why
    bridge, warm, note = _cold_start_cover(spec, best, cands, config)
    if bridge is not None:
        as_primary = f" (as the primary: {bridge.reason})" if bridge.reason else ""
        cands = [
            replace(c, verdict="bridge", reason=note + as_primary) if c is bridge else c
            for c in cands
        ]
        tiers.append(replace(bridge.tier, role=TierRole.BRIDGE, min_scale=1 if warm else None))
        warm = 0
    else:
        tiers[0] = replace(best.tier, min_scale=warm)
    why += f"; cold start {best.cold_start_ms:.0f} ms alone breaks the goal: {note}"
    return replace(best, reason=why), tiers, cands, warm, why


def _cold_start_cover(
    spec: ModelSpec, best: Candidate, cands: list[Candidate], cfg: PolicyConfig
) -> tuple[Candidate | None, int, str]:
    """(bridge candidate or None, warm minimum, what was done) for a primary whose cold
    start breaks the goal: a fast-starting bridge if one meets the goal from zero, else
    the cheaper of a warm bridge and one warm primary replica."""
    goal = spec.latency.p95_ms
    # A bridge serves only while the primary starts: it must answer one request within
    # the goal, not carry the whole load.
    others = [
        c
        for c in cands
        if c.tier.device is Device.CPU
        and c.fits
        and c.tier != best.tier
        and c.cold_start_ms is not None
        and c.solo_p95_ms is not None
        and c.solo_p95_ms <= goal
    ]
    fast = [c for c in others if (c.cold_start_ms or 0) + (c.solo_p95_ms or 0) <= goal]
    if fast:
        b = min(fast, key=lambda c: c.cold_start_ms or 0)
        return (
            b,
            0,
            (
                f"{b.key} bridges cold starts (starts in {b.cold_start_ms:.0f} ms, "
                f"p95 {b.solo_p95_ms:.0f} ms alone)"
            ),
        )
    idle_primary = best.warm_cost_per_hour or 0.0
    if others:
        b = min(others, key=lambda c: c.warm_cost_per_hour or 0.0)
        idle_bridge = b.warm_cost_per_hour or 0.0
        if idle_bridge < idle_primary:
            return b, 1, f"one warm {b.key} replica bridges cold starts ({idle_bridge:.4f}/hour)"
    return None, 1, f"one {best.key} replica is kept warm ({idle_primary:.4f}/hour)"
