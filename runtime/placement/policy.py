"""The manager's policy: where each model runs, decided from profiles and hardware.

:func:`choose_runtime` is pure over frozen inputs (the spec, its profiles, the
inventory, the GPU ledger, the policy config, the expected load and ``now``):

1. candidates are the model's runtimes x the devices the hardware allows (``wasm`` on
   CPU only; CUDA where the inventory has a GPU with room), each with the room its
   hardware allows (:mod:`runtime.placement.capacity`), scored in
   :mod:`runtime.placement.candidates`;
2. each candidate's p95 at the expected load is predicted from its profile: the warm
   p95 at the concurrency each replica carries, plus the p95 of queueing (Erlang C,
   M/M/c, with c = replicas x the parallelism the profile measured), with as few
   replicas as keep utilization under the configured ceiling, within ``max-scale``
   (:mod:`runtime.placement.queueing`);
3. candidates that miss the p95 goal (or the tokens/s goal) are dropped, and the
   cheapest of the rest wins: each priced by what it holds while it holds it
   (:mod:`runtime.placement.pricing`: a scale-to-zero replica for the fraction of the
   hour it is up; a model in the WASM host for its compute and resident weights), plus
   what covering its cold start would cost;
4. when the model scales to zero and the winner's cold start alone breaks the goal,
   a bridge tier (a fast-starting, or else warm, CPU/WASM candidate that meets the
   goal) or a warm minimum of one replica is added, whichever costs less; it is said
   (:mod:`runtime.placement.cold_start`).
   A model in the WASM host starts in ``wasm_instance_start_ms`` (an instance in a
   warm host, weights resident), so its cold start needs no cover;
5. a goal no candidate meets is reported (``goal_met=False``), with the fastest
   candidate placed anyway, never hidden.

Its settings and prices are :mod:`runtime.placement.policy_config`'s.
"""

from __future__ import annotations

import math
from dataclasses import replace

from runtime.placement.candidates import evaluate, in_host, tiers_for, without_gpu
from runtime.placement.cold_start import cover_cold_start, cover_cost
from runtime.placement.gpu_packing import Resident
from runtime.placement.inventory import Inventory
from runtime.placement.policy_config import CostModel, PolicyConfig, policy_config
from runtime.placement.pricing import held_fraction, idle_seconds
from runtime.placement.profiles import Profile
from runtime.placement.queueing import erlang_c_wait_p95
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Device, Placement, Tier
from runtime.spec.placement_decision import Candidate, PlacementDecision

__all__ = [
    "Candidate",
    "CostModel",
    "PlacementDecision",
    "PolicyConfig",
    "choose_runtime",
    "erlang_c_wait_p95",
    "plan",
    "policy_config",
]


def choose_runtime(
    spec: ModelSpec,
    profiles: tuple[Profile, ...],
    inventory: Inventory,
    config: PolicyConfig,
    now: float,
    *,
    load_rps: float | None = None,
    resident: tuple[Resident, ...] = (),
    available: frozenset[RuntimeName] | None = None,
    observed_p95: dict[str, float] | None = None,
    cuda_runtimes: frozenset[RuntimeName] | None = None,
) -> PlacementDecision:
    """Where ``spec`` runs now, and why. ``resident`` is the GPU ledger (models already
    holding GPU memory); ``available`` the runtimes this build can run (None: all);
    ``observed_p95`` replaces a tier's prediction where the gateway saw worse;
    ``cuda_runtimes`` the runtimes whose build here can use this host's GPU (None: all
    that can in principle, as when planning for another site)."""
    load = (
        load_rps if load_rps is not None else config.expected_rps.get(spec.name, config.default_rps)
    )
    cands = [
        evaluate(
            spec, t, profiles, inventory, resident, load, config, available, observed_p95 or {}
        )
        for t in tiers_for(spec, inventory, cuda_runtimes)
    ]
    best, why, goal_met = _pick(spec, cands, load, config)
    tiers: list[Tier] = [best.tier]
    warm = 0
    if spec.scaling.min_scale == 0 and best.cold_start_ms is not None:
        best, tiers, cands, warm, why = cover_cold_start(spec, best, cands, config, why)
    if best.keep_alive_s is not None and not tiers[0].min_scale:
        tiers[0] = replace(tiers[0], keep_alive_s=best.keep_alive_s)
        why += _keep_alive_why(spec, best, load)
        best = replace(best, reason=why)
    cands = [best if c.tier == best.tier else c for c in cands]
    for i, c in enumerate(cands):
        if c.verdict == "rejected" and c.meets_goal:
            cands[i] = replace(
                c, reason=f"meets the goal but costs more ({c.cost_per_hour:.4f}/hour)"
            )
    cands += without_gpu(spec, inventory, cuda_runtimes, cands)
    placement = Placement(spec.name, tuple(tiers), reason=why)
    return PlacementDecision(spec.name, placement, tuple(cands), goal_met, load, warm, now)


def _keep_alive_why(spec: ModelSpec, best: Candidate, load: float) -> str:
    """Why the chosen tier goes to zero soon after each request, with the share of the
    time its replica is up either way."""
    assert best.keep_alive_s is not None and best.cold_start_ms is not None
    cold_s = best.cold_start_ms / 1000
    short = held_fraction(load, best.keep_alive_s, warm=False, cold_s=cold_s)
    usual = held_fraction(load, idle_seconds(spec), warm=False, cold_s=cold_s)
    return (
        f"; to zero {best.keep_alive_s:g} s after its last request, since its cold start "
        f"({best.cold_start_ms:.0f} ms) fits the goal: at {load:g} req/s a replica is up "
        f"{short:.0%} of the time, against {usual:.0%} kept {idle_seconds(spec):g} s"
    )


def _pick(
    spec: ModelSpec, cands: list[Candidate], load: float, cfg: PolicyConfig
) -> tuple[Candidate, str, bool]:
    """(the chosen candidate, why, whether it meets the goal): the cheapest that meets
    the goal, its cold start's cover included, else the fastest scored one, else a
    fallback by hardware kind."""
    goal = spec.latency.p95_ms
    meeting = [c for c in cands if c.meets_goal]
    if meeting:
        total = {
            c.tier: (c.cost_per_hour or 0.0) + cover_cost(spec, c, cands, cfg) for c in meeting
        }
        best = min(meeting, key=lambda c: (total[c.tier], c.predicted_p95_ms or 0.0))
        cover = total[best.tier] - (best.cost_per_hour or 0.0)
        where = " in the WASM host" if in_host(best.tier, cfg) else ""
        why = (
            f"cheapest that meets p95 {goal:g} ms at {load:g} req/s: {best.key}{where}, "
            f"predicted {best.predicted_p95_ms:.0f} ms, {best.cost_per_hour:.4f}/hour"
            + (f" + {cover:.4f}/hour to cover its cold start" if cover > 0 else "")
        )
        return replace(best, verdict="chosen", reason=why), why, True
    scored = [c for c in cands if c.predicted_p95_ms is not None]
    if scored:
        best = min(scored, key=lambda c: c.predicted_p95_ms or math.inf)
        why = (
            f"NO candidate meets p95 {goal:g} ms at {load:g} req/s; placed on the "
            f"fastest, {best.key} ({best.reason})"
        )
    else:
        best, why = _fallback(spec, cands)
    return replace(best, verdict="chosen", reason=why), why, False


def _fallback(spec: ModelSpec, cands: list[Candidate]) -> tuple[Candidate, str]:
    """No candidate could be scored: with profiles but no hardware that fits, the first
    CPU tier; with no profile at all, the first GPU tier, else the first CPU one."""
    cpu = [c for c in cands if c.tier.device is Device.CPU] or cands
    if any(c.source != "none" for c in cands):
        best = cpu[0]
        return best, (
            f"NO candidate fits this hardware; placed on {best.key} anyway "
            f"({best.key}: {best.reason})"
        )
    # As `--device auto` would: the GPU where there is one, else the CPU.
    gpu = [c for c in cands if c.tier.device is Device.CUDA]
    best = (gpu or cpu)[0]
    return best, (
        f"no profile to decide from; placed on {best.key}, the first runtime "
        f"the model lists, on the GPU where there is one "
        f"(run `edgeinfer profile --model {spec.name}`)"
    )


# -- every model -----------------------------------------------------------------------


def plan(
    config: ModelConfig,
    profiles: dict[str, tuple[Profile, ...]],
    inventory: Inventory,
    policy: PolicyConfig,
    now: float,
    *,
    available: frozenset[RuntimeName] | None = None,
    resident: tuple[Resident, ...] = (),
) -> tuple[PlacementDecision, ...]:
    """Every model's decision, in config order. Models placed on a GPU join the ledger
    (as busy: a plan never evicts a model it has just placed), so later ones see the
    room that is left and no GPU is over-committed."""
    ledger = list(resident)
    out = []
    for spec in config.models:
        if spec.endpoint is not None:
            continue
        d = choose_runtime(
            spec,
            profiles.get(spec.name, ()),
            inventory,
            policy,
            now,
            resident=tuple(ledger),
            available=available,
        )
        chosen = d.chosen
        if chosen is not None and chosen.gpu is not None:
            ledger = [r for r in ledger if r.model not in chosen.evict]
            ledger.append(Resident(spec.name, chosen.gpu, chosen.memory_mib, now, busy=True))
        out.append(d)
    return tuple(out)
