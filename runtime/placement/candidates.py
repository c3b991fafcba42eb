"""One candidate tier for a model, scored (pure): the tiers the hardware offers, each one's
profile (measured, or a CUDA estimate from the CPU one), the room its hardware allows,
its predicted p95 and cost at the expected load, and the verdict against the goals."""

from __future__ import annotations

import math
from dataclasses import replace

from runtime.placement.capacity import replica_cores, room
from runtime.placement.gpu_packing import Resident
from runtime.placement.inventory import Inventory
from runtime.placement.policy_config import PolicyConfig
from runtime.placement.pricing import (
    choose_keep_alive,
    held_fraction,
    idle_seconds,
    in_host_cost_per_s,
    replica_cost_per_s,
)
from runtime.placement.profiles import Profile, estimate_cuda
from runtime.placement.queueing import predict
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import CUDA_CAPABLE, Device, Tier
from runtime.spec.placement_decision import Candidate

__all__ = ["evaluate", "in_host", "tiers_for", "without_gpu"]


def _profile_for(
    spec: ModelSpec,
    runtime: RuntimeName,
    device: Device,
    profiles: tuple[Profile, ...],
    cfg: PolicyConfig,
) -> Profile | None:
    exact = next((p for p in profiles if p.runtime is runtime and p.device == device.value), None)
    if exact is not None or device is Device.CPU:
        return exact
    cpu = next((p for p in profiles if p.runtime is runtime and p.device == "cpu"), None)
    if cpu is None:
        return None
    speedup = cfg.gpu_speedup_generation if spec.generative else cfg.gpu_speedup_other
    mem = spec.resources.gpu_memory_mib or cpu.memory_mib or cpu.rss_mib
    return estimate_cuda(
        cpu, speedup=speedup, init_s=cfg.cuda_init_s, gpu_memory_mib=mem + cfg.cuda_context_mib
    )


def tiers_for(
    spec: ModelSpec, inv: Inventory, cuda_runtimes: frozenset[RuntimeName] | None
) -> list[Tier]:
    """This host's CPU and GPUs; or, for an inventory of cluster nodes (cluster mode),
    every cluster's CPU and the GPUs of the clusters that have them. On this host,
    ``cuda_runtimes`` (when given) are the runtimes whose build can use its GPU."""
    clusters: tuple[str | None, ...] = (None,)
    gpu_clusters: tuple[str | None, ...] = (None,) if inv.gpus else ()
    if inv.nodes:
        clusters = tuple(dict.fromkeys(n.cluster for n in inv.nodes))
        gpu_clusters = inv.gpu_clusters()
    tiers = [Tier(r, Device.CPU, cluster=c) for c in clusters for r in spec.runtimes]
    for runtime in spec.runtimes:
        if runtime in CUDA_CAPABLE:
            tiers += [
                Tier(runtime, Device.CUDA, cluster=c)
                for c in gpu_clusters
                if c is not None or cuda_runtimes is None or runtime in cuda_runtimes
            ]
    return tiers


def in_host(tier: Tier, cfg: PolicyConfig) -> bool:
    """Whether the tier runs in this machine's one shared WASM host."""
    return tier.runtime is RuntimeName.WASM and cfg.wasm_in_host and tier.cluster is None


def _cost_per_hour(
    tier: Tier,
    profile: Profile,
    replicas: int,
    load_rps: float,
    gpu_total_mib: float,
    inv: Inventory,
    spec: ModelSpec,
    cfg: PolicyConfig,
    keep_alive_s: float | None,
) -> tuple[float, float]:
    """(cost per hour at ``load_rps``, cost per hour of one replica kept warm); a
    replica that scales to zero stays up ``keep_alive_s`` after a request (None: the
    rule's idle period) and is held while it loads again."""
    mem_gib = max(profile.rss_mib, profile.memory_mib) / 1024
    cores = replica_cores(spec, profile, inv)
    if in_host(tier, cfg):
        cost = in_host_cost_per_s(
            rps=load_rps,
            # The host keeps the same headroom on its cores as a replica does.
            service_s=profile.service_ms / 1000 / cfg.max_utilization,
            cores=cores,
            weights_gib=profile.memory_mib / 1024,
            host_share_gib=cfg.wasm_host_share_mib / 1024,
            cpu_second=cfg.cost.cpu_second,
            gib_second=cfg.cost.gib_second,
        )
        return cost * 3600, cost * 3600
    if tier.device is Device.CUDA:
        # A GPU is shared by packing: a model pays the larger of its memory share and
        # the share of time it keeps the GPU busy, plus one host core per replica.
        gpu_mem = profile.gpu_memory_mib or profile.memory_mib
        mem_share = gpu_mem / gpu_total_mib if gpu_total_mib else 1.0
        busy_share = min(1.0, load_rps * profile.service_ms / 1000 / max(1, replicas))
        per_s = (
            cfg.cost.gpu_second * max(mem_share, busy_share)
            + cfg.cost.cpu_second
            + cfg.cost.gib_second * mem_gib
        )
    else:
        per_s = cfg.cost.cpu_second * cores + cfg.cost.gib_second * mem_gib
    held = held_fraction(
        load_rps,
        idle_seconds(spec) if keep_alive_s is None else keep_alive_s,
        warm=spec.scaling.min_scale > 0,
        cold_s=profile.cold_start_s,
    )
    return replica_cost_per_s(per_s, replicas, held) * 3600, per_s * 3600


def _keep_alive(
    spec: ModelSpec, tier: Tier, profile: Profile, p95_ms: float, load_rps: float, cfg: PolicyConfig
) -> float | None:
    """The keep-alive the manager chooses for the tier's replicas: a short one for a
    rarely used model that scales to zero and whose cold start plus p95 fits its goal
    (so a request that finds it at zero is still answered in time), else None (the
    rule's idle period: a warm minimum, a busy model, or a cold start that needs
    cover, which a short keep-alive would only expose more often)."""
    if not cfg.keep_alive_to_zero or spec.scaling.min_scale > 0 or in_host(tier, cfg):
        return None
    if profile.cold_start_s * 1000 + p95_ms > spec.latency.p95_ms:
        return None
    return choose_keep_alive(
        load_rps, profile.cold_start_s, idle_seconds(spec), cfg.shortest_keep_alive_s, cfg.min_gain
    )


def _no_profile(spec: ModelSpec, tier: Tier, available: frozenset[RuntimeName] | None) -> Candidate:
    missing = (
        f"runtime {tier.runtime.value!r} is not available in this build"
        if available is not None and tier.runtime not in available
        else f"no profile; run `edgeinfer profile --model {spec.name}`"
    )
    if tier.device is Device.CUDA:
        missing = f"no {tier.key} or cpu profile to estimate from ({missing})"
    return Candidate(tier, "none", reason=missing)


def _judge(spec: ModelSpec, cand: Candidate, note: str) -> Candidate:
    """The verdict on a scored candidate against the model's latency and tokens goals."""
    goal = spec.latency
    p95 = cand.predicted_p95_ms if cand.predicted_p95_ms is not None else math.inf
    tps = cand.tokens_per_s
    if math.isinf(p95):
        return replace(cand, reason=f"overloaded: {note}")
    if p95 > goal.p95_ms:
        extra = f" ({note})" if note else ""
        return replace(cand, reason=f"p95 {p95:.0f} ms > goal {goal.p95_ms:g} ms{extra}")
    if goal.min_tokens_per_s and (tps or 0) < goal.min_tokens_per_s:
        return replace(cand, reason=f"{tps or 0:.1f} tokens/s < goal {goal.min_tokens_per_s:g}")
    return replace(cand, meets_goal=True, reason=note)


def evaluate(
    spec: ModelSpec,
    tier: Tier,
    profiles: tuple[Profile, ...],
    inv: Inventory,
    resident: tuple[Resident, ...],
    load_rps: float,
    cfg: PolicyConfig,
    available: frozenset[RuntimeName] | None,
    observed_p95: dict[str, float],
) -> Candidate:
    """One tier for the model: its profile, the room its hardware allows, the predicted
    p95 and cost at ``load_rps``, and whether it meets the goal."""
    profile = _profile_for(spec, tier.runtime, tier.device, profiles, cfg)
    if profile is None:
        return _no_profile(spec, tier, available)
    cold_ms = cfg.wasm_instance_start_ms if in_host(tier, cfg) else profile.cold_start_s * 1000
    base = Candidate(
        tier,
        profile.source,
        cold_start_ms=cold_ms,
        solo_p95_ms=profile.points[0].p95_ms,
    )
    space = room(spec, tier, profile, inv, resident, cfg.gpu_reserve_mib)
    if isinstance(space, str):
        return replace(base, reason=space, fits=False)
    p95, replicas, tps, note = predict(spec, profile, load_rps, space.max_replicas, cfg)
    if note and space.note:  # the room binds: say why (e.g. the core budget's arithmetic)
        note += f" ({space.note})"
    seen = observed_p95.get(tier.key)
    if seen is not None and math.isinf(seen):
        return replace(base, reason="its replicas failed to start or to serve here (observed)")
    if seen is not None and seen > p95:
        p95, note = seen, f"observed p95 {seen:.0f} ms"
    keep_alive = _keep_alive(spec, tier, profile, p95, load_rps, cfg)
    cost, warm_cost = _cost_per_hour(
        tier, profile, replicas, load_rps, space.gpu_total_mib, inv, spec, cfg, keep_alive
    )
    cand = replace(
        base,
        predicted_p95_ms=p95,
        tokens_per_s=tps,
        replicas=replicas,
        cost_per_hour=cost,
        warm_cost_per_hour=warm_cost,
        evict=space.evict,
        gpu=space.gpu,
        memory_mib=space.need_mib,
        keep_alive_s=keep_alive,
    )
    return _judge(spec, cand, note)


def without_gpu(
    spec: ModelSpec,
    inv: Inventory,
    cuda_runtimes: frozenset[RuntimeName] | None,
    cands: list[Candidate],
) -> list[Candidate]:
    """The GPU tiers the model's runtimes could use but the hardware does not offer,
    listed as rejected with the reason, so a plan says why no GPU was considered."""
    considered = {c.tier.runtime for c in cands if c.tier.device is Device.CUDA}
    out = []
    for runtime in spec.runtimes:
        if runtime not in CUDA_CAPABLE or runtime in considered:
            continue
        if inv.nodes:
            reason = "no cluster in the inventory has a GPU"
        elif not inv.gpus:
            reason = "no GPU in the inventory"
        else:
            reason = f"this host's {runtime.value} build cannot use its GPU"
        out.append(
            Candidate(tier=Tier(runtime, Device.CUDA), source="none", reason=reason, fits=False)
        )
    return out
