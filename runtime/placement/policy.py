"""The manager's policy: where each model runs, decided from profiles and hardware.

:func:`choose_runtime` is pure over frozen inputs (the spec, its profiles, the
inventory, the GPU ledger, the policy config, the expected load and ``now``):

1. candidates are the model's runtimes x the devices the hardware allows (``wasm`` on
   CPU only; CUDA where the inventory has a GPU with room), each with the room its
   hardware allows (:mod:`runtime.placement.capacity`);
2. each candidate's p95 at the expected load is predicted from its profile: the warm
   p95 at the concurrency each replica carries, plus the p95 of queueing (Erlang C,
   M/M/c, with c = replicas x the parallelism the profile measured), with as few
   replicas as keep utilization under the configured ceiling, within ``max-scale``;
3. candidates that miss the p95 goal (or the tokens/s goal) are dropped, and the
   cheapest of the rest wins: each priced by what it holds while it holds it
   (:mod:`runtime.placement.pricing`: a scale-to-zero replica for the fraction of the
   hour it is up; a model in the WASM host for its compute and resident weights), plus
   what covering its cold start would cost;
4. when the model scales to zero and the winner's cold start alone breaks the goal,
   a bridge tier (a fast-starting, or else warm, CPU/WASM candidate that meets the
   goal) or a warm minimum of one replica is added, whichever costs less; it is said.
   A model in the WASM host starts in ``wasm_instance_start_ms`` (an instance in a
   warm host, weights resident), so its cold start needs no cover;
5. a goal no candidate meets is reported (``goal_met=False``), with the fastest
   candidate placed anyway, never hidden.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import Field, ValidationError

from runtime.errors import ConfigError
from runtime.placement.capacity import replica_cores, room
from runtime.placement.gpu_packing import Resident
from runtime.placement.inventory import Inventory
from runtime.placement.pricing import (
    held_fraction,
    idle_seconds,
    in_host_cost_per_s,
    replica_cost_per_s,
)
from runtime.placement.profiles import Profile, estimate_cuda
from runtime.spec.frozen import Frozen
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import CUDA_CAPABLE, Device, Placement, Tier, TierRole
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


class CostModel(Frozen):
    """Prices (any currency) per second of a resource held."""

    gpu_second: float = Field(0.0008, ge=0, description="one whole GPU (~2.9/hour)")
    cpu_second: float = Field(0.000011, ge=0, description="one CPU core (~0.04/hour)")
    gib_second: float = Field(0.0000014, ge=0, description="one GiB of host memory")


class PolicyConfig(Frozen):
    """The ``manager:`` section of a config file."""

    cost: CostModel = CostModel()
    default_rps: float = Field(1.0, gt=0, description="expected load when none is observed")
    expected_rps: dict[str, float] = Field(default_factory=dict, description="per model")
    max_utilization: float = Field(0.8, gt=0, lt=1, description="plan replicas to stay under")
    gpu_reserve_mib: float = Field(512, ge=0, description="kept free on every GPU")
    cuda_context_mib: float = Field(300, ge=0, description="added to a model's GPU memory")
    gpu_speedup_generation: float = Field(10.0, gt=0, description="estimate without a profile")
    gpu_speedup_other: float = Field(4.0, gt=0, description="estimate without a profile")
    cuda_init_s: float = Field(2.0, ge=0, description="estimated CUDA start-up per replica")
    replan_window_s: float = Field(30.0, gt=0, description="a breach must last this long")
    replan_cooldown_s: float = Field(60.0, ge=0, description="between two moves of a model")
    load_change_factor: float = Field(2.0, gt=1, description="observed/planned load to re-plan")
    min_gain: float = Field(0.2, ge=0, lt=1, description="cost saving needed to move")
    cover_cold_starts: bool = Field(
        True, description="a cold start that breaks the goal gets a bridge or a warm replica"
    )
    tick_seconds: float = Field(5.0, gt=0, le=3600, description="how often the manager looks")
    wasm_in_host: bool = Field(
        True,
        description="WASM-tier models run in the one shared WASM host (an instance per cold "
        "start, weights resident); false: a worker process each, priced as a native replica",
    )
    wasm_instance_start_ms: float = Field(
        10.0,
        ge=0,
        description="a cold start in the warm WASM host: a new instance from the snapshot "
        "(~0.2 ms) and the first touch of its pages (~8 ms, README's snapshot table)",
    )
    wasm_host_share_mib: float = Field(
        4.0, ge=0, description="each model's share of the WASM host process's own memory"
    )


def policy_config(config: ModelConfig) -> PolicyConfig:
    try:
        return PolicyConfig.model_validate(config.manager)
    except ValidationError as exc:
        raise ConfigError.invalid(str(config.source), exc, "manager.") from None


# -- queueing -------------------------------------------------------------------------


def erlang_c_wait_p95(servers: int, offered: float, service_s: float) -> float:
    """95th percentile of the wait in an M/M/c queue (seconds): ``servers`` = c,
    ``offered`` = arrival rate x mean service time (Erlangs). inf when unstable."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return math.inf
    # Erlang C through the Erlang B recursion (stable for large c).
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    c = b / (1 - rho + rho * b)
    if c <= 0.05:
        return 0.0
    drain = (servers - offered) / service_s  # c*mu - lambda
    return math.log(c / 0.05) / drain


# -- one model ------------------------------------------------------------------------


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


def _tiers(
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


def _predict(
    spec: ModelSpec, profile: Profile, load_rps: float, max_replicas: int, cfg: PolicyConfig
) -> tuple[float, int, float | None, str]:
    """(p95 ms, replicas, tokens/s, note) at ``load_rps`` with the fewest replicas that
    keep utilization under the ceiling; p95 is inf when even ``max_replicas`` cannot."""
    service_s = profile.service_ms / 1000
    per_replica = max(1, math.floor(profile.parallelism))
    if spec.scaling.container_concurrency:
        per_replica = min(per_replica, spec.scaling.container_concurrency)
    offered = load_rps * service_s
    needed = max(1, math.ceil(offered / (per_replica * cfg.max_utilization)))
    # The fewest replicas (from those the utilization ceiling asks for) whose
    # predicted p95 meets the goal; a long M/M/c tail may ask for more.
    replicas = min(needed, max_replicas)
    while True:
        wait = erlang_c_wait_p95(replicas * per_replica, offered, service_s)
        busy = max(1.0, offered / replicas)
        p95 = profile.p95_at(busy) + wait * 1000
        if p95 <= spec.latency.p95_ms or replicas >= min(max_replicas, needed + 64):
            break
        replicas += 1
    note = ""
    if needed > max_replicas:
        note = f"needs {needed} replicas for {load_rps:g} req/s, {max_replicas} allowed"
    tps = profile.tokens_per_s
    if tps is not None and busy > 1 and len(profile.points) > 1:
        last = profile.points[-1]
        if last.tokens_per_s is not None:
            f = min(1.0, (busy - 1) / max(1, last.concurrency - 1))
            tps = tps + f * (last.tokens_per_s - tps)
    return p95, replicas, tps, note


def _in_host(tier: Tier, cfg: PolicyConfig) -> bool:
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
) -> tuple[float, float]:
    """(cost per hour at ``load_rps``, cost per hour of one replica kept warm)."""
    mem_gib = max(profile.rss_mib, profile.memory_mib) / 1024
    cores = replica_cores(spec, profile, inv)
    if _in_host(tier, cfg):
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
    held = held_fraction(load_rps, idle_seconds(spec), warm=spec.scaling.min_scale > 0)
    return replica_cost_per_s(per_s, replicas, held) * 3600, per_s * 3600


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


def _evaluate(
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
    cold_ms = cfg.wasm_instance_start_ms if _in_host(tier, cfg) else profile.cold_start_s * 1000
    base = Candidate(
        tier,
        profile.source,
        cold_start_ms=cold_ms,
        solo_p95_ms=profile.points[0].p95_ms,
    )
    space = room(spec, tier, profile, inv, resident, cfg.gpu_reserve_mib)
    if isinstance(space, str):
        return replace(base, reason=space, fits=False)
    p95, replicas, tps, note = _predict(spec, profile, load_rps, space.max_replicas, cfg)
    if note and space.note:  # the room binds: say why (e.g. the core budget's arithmetic)
        note += f" ({space.note})"
    seen = observed_p95.get(tier.key)
    if seen is not None and math.isinf(seen):
        return replace(base, reason="its replicas failed to start or to serve here (observed)")
    if seen is not None and seen > p95:
        p95, note = seen, f"observed p95 {seen:.0f} ms"
    cost, warm_cost = _cost_per_hour(
        tier, profile, replicas, load_rps, space.gpu_total_mib, inv, spec, cfg
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
    )
    return _judge(spec, cand, note)


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
        _evaluate(
            spec, t, profiles, inventory, resident, load, config, available, observed_p95 or {}
        )
        for t in _tiers(spec, inventory, cuda_runtimes)
    ]
    best, why, goal_met = _pick(spec, cands, load, config)
    tiers: list[Tier] = [best.tier]
    warm = 0
    if spec.scaling.min_scale == 0 and best.cold_start_ms is not None:
        best, tiers, cands, warm, why = _cover_cold_start(spec, best, cands, config, why)
    cands = [best if c.tier == best.tier else c for c in cands]
    for i, c in enumerate(cands):
        if c.verdict == "rejected" and c.meets_goal:
            cands[i] = replace(
                c, reason=f"meets the goal but costs more ({c.cost_per_hour:.4f}/hour)"
            )
    cands += _without_gpu(spec, inventory, cuda_runtimes, cands)
    placement = Placement(spec.name, tuple(tiers), reason=why)
    return PlacementDecision(spec.name, placement, tuple(cands), goal_met, load, warm, now)


def _cover_cost(spec: ModelSpec, c: Candidate, cands: list[Candidate], cfg: PolicyConfig) -> float:
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
            c.tier: (c.cost_per_hour or 0.0) + _cover_cost(spec, c, cands, cfg) for c in meeting
        }
        best = min(meeting, key=lambda c: (total[c.tier], c.predicted_p95_ms or 0.0))
        cover = total[best.tier] - (best.cost_per_hour or 0.0)
        where = " in the WASM host" if _in_host(best.tier, cfg) else ""
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


def _cover_cold_start(
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
    if _in_host(best.tier, config):
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


def _without_gpu(
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
