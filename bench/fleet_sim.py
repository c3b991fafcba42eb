"""Fleet simulation: 200 models for a day on a few GPUs and CPU nodes, three policies.

A discrete-event simulation, per model, of requests arriving (a daily cycle, a phase
per model, plus bursts), replicas that start cold, serve one request at a time, scale
up when a request would wait and back to zero after their keep-alive (above their warm
minimum): ``KEEPALIVE`` idle seconds (Knative's 60 s stable window + 30 s grace), or
the shorter one the manager chose for the tier (``Tier.keep_alive_s``). The modules:
the fleet and its traffic (``bench/fleet_synth.py``), the replay of one model's
requests (``bench/fleet_replay.py``), what is counted (``bench/fleet_accounting.py``).
Policies:

- ``always_gpu``: every model on a GPU, one replica always warm (KServe/Kaito style).
- ``static_format``: by artifact format: GGUF on a GPU, ONNX on a CPU; scale to zero.
- ``manager``: ``runtime.placement.policy.choose_runtime`` every hour on the load seen in the
  hour before (the first hour: the expected load), with its bridge / warm minimum for
  cold starts and its keep-alive (a rarely used model whose cold start fits its goal
  goes to zero 6 s after a request); a move starts the new tier before the old one
  goes. Every model has a
  WASM form beside its native one (issue 14): a tier in the shared WASM host starts an
  instance in ``wasm_instance_start_ms`` and holds no cores between requests.
- ``manager_native_only``: the same policy with the WASM forms taken away (the fleet
  as it was before issue 14), for comparison.

Profiles: the bundled models' CPU profiles measured by ``edgeinfer profile`` on this
host (``smollm2`` for chat, ``gemma3-270m`` for completion, ``minilm`` for
embeddings, ``magika`` for classification), native and WASM (``wasm-cpu``: the wasi-nn
GGML guest, our engine), scaled to each synthetic model's size:
latency, cold-start load/warm-up and memory linear in parameters (a replica computes
on the same cores as this host's). GPU profiles are not measured (no GPU here): they
are ``runtime.placement.profiles.estimate_cuda`` of the scaled CPU profile, with the factors
``edgeinfer plan`` uses. Latency goals are multiples of the base model's measured p50,
so the mix of CPU-able and GPU-only models does not depend on how busy the measuring
host was (a profile's p95 comes from few requests, and one stall moves it).

GPU-hours, three accountings, all reported: ``gpu_hours`` is what each policy holds as
deployed (the baselines: one whole GPU per replica, ``nvidia.com/gpu: 1``; the manager:
replicas packed by memory, GPUs in use = ceil(memory held / GPU memory) at every
moment); ``gpu_hours_packed`` packs every policy's GPU replicas that same way;
``gpu_memory_hours`` is GPU memory held in whole-GPU hours, with no rounding up (the
like-for-like figure that neither sharing nor GPU size flatters).

Capacity is not enforced: ``gpus_peak`` says how many GPUs each policy would need at
its busiest moment (packed) and ``fits_gpus`` whether that is within the fleet's
``GPUS``; CPU replicas are bounded per model (``max-scale``) only.

``gpu_memory_hours_floor`` is a lower bound for every policy that keeps requests within
their goals (``gpu_memory_floor``), model by model for the models that only a GPU
serves in time: one replica all day where the GPU cold start breaks the goal (or their
requests' GPU service time, when longer); else their requests' GPU service time, one
load, and over each idle gap between requests the smaller of the gap and one more
load (what even a policy that knew every arrival in advance would hold). Against
always-on GPU, ``best_possible_gpu_memory_hours_saved`` is the most any such policy can
save like for like with this fleet; ``manager_share_of_best_saving`` is the share of it
the manager reached (issue 14's target: >= 0.90). The floor is not reachable: it counts
no queueing (a busy model needs idle replicas to answer in time) and no uncertainty
about arrivals. Until issue 14's keep-alive work the floor counted nothing for a model
that only a GPU serves but that starts in time, as if its requests held no GPU; that
count is still reported (``gpu_memory_hours_floor_loose``,
``manager_share_of_best_saving_loose``). Each policy names the models furthest over
their own floor (``most_gpu_memory_hours_over_floor``) with the tiers it chose.

The WASM forms of the GGUF families run the native llama.cpp inside the wasi-nn
GGML guest. On a machine shared with other work the two tiers' profiles scatter by
far more than that difference (one run here: llama-cpu p50 4.8 s and wasm-cpu 0.8 s
for the same 32 tokens), so by default (``--ggml-wasm derived``) their WASM profile is
the native one slowed by ``GGML_WASM_SPEED`` (bench/wasi_nn_overhead.py, quiet
machine: 0.959 of native tokens/s) with the measured WASM profile's memory; the
engine families (MiniLM, Magika) use their measured WASM profiles.
``--ggml-wasm measured`` uses the measured ones as they are.

Prints one JSON line. Run: ``python bench/fleet_sim.py [--models 200] [--seed 1]``
(reads profiles from ``$EDGEINFER_HOME``; run ``edgeinfer profile`` first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_accounting import (  # noqa: E402
    gap_cause,
    gpu_memory_floor,
    gpu_memory_floor_loose,
    gpu_share,
    memory_gpu_hours,
    model_floor_seconds,
    packed_gpu_hours,
    peak_gpus,
    warm_p95_meets_goal,
    whole_gpu_hours,
)
from bench.fleet_replay import TierSim, simulate, tier_of  # noqa: E402
from bench.fleet_synth import (  # noqa: E402
    CPU_NODE,
    DAY,
    FAMILIES,
    FORMAT,
    GPU_MIB,
    GPUS,
    Synthetic,
    arrivals,
    ggml_wasm_from_native,
    make_fleet,
)
from runtime.placement.inventory import GpuInfo, Inventory  # noqa: E402
from runtime.placement.policy import PolicyConfig, choose_runtime  # noqa: E402
from runtime.placement.profiles import Profile, ProfileStore  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.model import RuntimeName, load_config  # noqa: E402
from runtime.spec.placement import Device  # noqa: E402


def run(
    fleet: list[Synthetic], traffic: list[np.ndarray], policy: str, cfg: PolicyConfig, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    inv = Inventory(
        cpu=CPU_NODE,
        memory_total_mib=256_000,
        memory_free_mib=250_000,
        gpus=tuple(
            GpuInfo(index=i, memory_total_mib=int(GPU_MIB), memory_free_mib=int(GPU_MIB))
            for i in range(GPUS)
        ),
    )
    intervals: list[tuple[float, float, TierSim]] = []
    total = within = moves = on_wasm = 0
    feasible = [0, 0, 0]  # models, requests, within goal: of goals some tier meets warm
    feasible_held = 0.0  # their GPU memory-hours
    gap: dict[str, float] = {"floor": 0.0, "gpu_from_zero": 0.0, "load": 0.0, "choice": 0.0}
    over: dict[str, float] = dict.fromkeys(gap, 0.0)
    worst: list[tuple[float, float, Synthetic, str]] = []
    by_family: dict[str, list[int]] = {f: [0, 0] for f in FAMILIES}
    for m, times in zip(fleet, traffic, strict=True):
        spec = m.spec
        profiles = (m.cpu, m.gpu) + ((m.wasm,) if m.wasm is not None else ())
        if policy == "manager_native_only":
            spec = spec.model_copy(update={"runtimes": spec.runtimes[:1]})
            profiles = (m.cpu, m.gpu)
        if policy == "always_gpu":
            hours = [(tier_of(m.gpu, gpu=True, min_warm=1, spec=spec), None)] * 24
        elif policy == "static_format":
            gpu = FORMAT[m.family] == "gguf"
            hours = [(tier_of(m.gpu if gpu else m.cpu, gpu=gpu, min_warm=0, spec=spec), None)] * 24
        else:
            hours = []
            counts = np.histogram(times, bins=24, range=(0, DAY))[0]
            for h in range(24):
                load = m.rate if h == 0 else max(counts[h - 1] / 3600, m.rate * 0.2)
                d = choose_runtime(spec, profiles, inv, cfg, h * 3600.0, load_rps=load)
                tiers = []
                for t in d.placement.tiers:
                    in_host = t.runtime is RuntimeName.WASM and cfg.wasm_in_host
                    p = m.gpu if t.device is Device.CUDA else m.cpu
                    if t.runtime is RuntimeName.WASM and m.wasm is not None:
                        p = m.wasm
                    tiers.append(
                        tier_of(
                            p,
                            gpu=t.device is Device.CUDA,
                            min_warm=t.min_scale or 0,
                            spec=spec,
                            host_start_s=cfg.wasm_instance_start_ms / 1000 if in_host else None,
                            keep_alive=t.keep_alive_s,
                        )
                    )
                hours.append((tiers[0], tiers[1] if len(tiers) > 1 else None))
                moves += h > 0 and hours[-1][0] != hours[-2][0]
            on_wasm += any(primary.host for primary, _ in hours)
        before = len(intervals)
        n, ok = simulate(times, hours, spec.latency.p95_ms, rng, intervals)
        held = memory_gpu_hours(intervals[before:])
        if held > 0:
            floor = model_floor_seconds(m, times) * gpu_share(m) / 3600
            gap[gap_cause(m, cfg)] += held
            over[gap_cause(m, cfg)] += held - floor
            worst.append((held - floor, held, m, _primaries(hours)))
        total += n
        within += ok
        if warm_p95_meets_goal(m):
            feasible[0] += 1
            feasible[1] += n
            feasible[2] += ok
            feasible_held += held
        by_family[m.family][0] += n
        by_family[m.family][1] += ok
    managed = policy.startswith("manager")
    own = packed_gpu_hours(intervals) if managed else whole_gpu_hours(intervals)
    peak = peak_gpus(intervals)
    cpu_core_h = sum((min(e, DAY) - s) * t.cores for s, e, t in intervals if not t.gpu) / 3600
    return {
        "slo_attainment": round(within / max(1, total), 5),
        # The same over the models whose goal some tier meets warm (warm_p95_meets_goal):
        "slo_attainment_feasible": round(feasible[2] / max(1, feasible[1]), 5),
        "feasible_models": feasible[0],
        "gpu_memory_hours_feasible": round(feasible_held, 2),
        "gpu_hours": round(own, 1),
        "gpu_hours_packed": round(packed_gpu_hours(intervals), 1),
        "gpu_memory_hours": round(memory_gpu_hours(intervals), 2),
        "cpu_core_hours": round(cpu_core_h, 1),
        "requests": total,
        "slo_by_task": {f: round(ok / max(1, n), 4) for f, (n, ok) in by_family.items()},
        "gpus_peak": peak,
        "fits_gpus": peak <= GPUS,
        **({"models_on_wasm_some_hour": on_wasm} if managed else {}),
        # GPU memory-hours by why the model held a GPU (see gap_cause), what of them
        # is over the models' own floors, and the models furthest over theirs, with the
        # primary tiers the policy chose hour by hour (tier/keep-alive/warm minimum).
        "gpu_memory_hours_by_cause": {k: round(v, 2) for k, v in gap.items()},
        "gpu_memory_hours_over_floor_by_cause": {k: round(v, 2) for k, v in over.items()},
        "most_gpu_memory_hours_over_floor": [
            f"{m.spec.name} {m.family} {m.scale * FAMILIES[m.family][1] / 1e6:.0f}M params "
            f"{m.rate:.4f} req/s goal {m.spec.latency.p95_ms / 1000:.1f}s "
            f"GPU p50 {m.gpu.points[0].p50_ms / 1000:.1f}s cold {m.gpu.cold_start_s:.1f}s: "
            f"held {h:.2f}, {o:.2f} over its floor ({gap_cause(m, cfg)}; {tiers})"
            for o, h, m, tiers in sorted(worst, key=lambda x: -x[0])
        ][:6],
        **({"moves": moves} if managed else {}),
    }


def _primaries(hours: list[tuple[TierSim, TierSim | None]]) -> str:
    """The primary tiers of a day, ``key/keep-alive[/warm N]: hours``, most hours first."""
    seen = Counter(
        f"{p.name}/{p.keep_alive:g}s" + (f"/warm {p.min_warm}" if p.min_warm else "")
        for p, _ in hours
    )
    return ", ".join(f"{k}: {n} h" for k, n in seen.most_common())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ggml-wasm", choices=["derived", "measured"], default="derived")
    args = ap.parse_args()
    settings = Settings.from_env()
    store = ProfileStore(settings.state_dir / "profiles")
    config = load_config()
    bases: dict[str, Profile] = {}
    wasm_bases: dict[str, Profile] = {}
    for spec in config.models:
        found = [p for p in store.for_model(spec, config.base_dir) if p.device == "cpu"]
        native = [p for p in found if p.runtime is not RuntimeName.WASM]
        if not native:
            sys.exit(f"no native CPU profile of {spec.name}; run `edgeinfer profile` first")
        bases[spec.name] = native[0]
        wasm = [p for p in found if p.runtime is RuntimeName.WASM]
        if not wasm:
            sys.exit(f"no wasm-cpu profile of {spec.name}; run `edgeinfer profile` first")
        wasm_bases[spec.name] = wasm[0]
        if args.ggml_wasm == "derived" and RuntimeName.LLAMA in spec.runtimes:
            wasm_bases[spec.name] = ggml_wasm_from_native(native[0], wasm[0])
    cfg = PolicyConfig()
    rng = np.random.default_rng(args.seed)
    fleet = make_fleet(args.models, bases, cfg, rng, wasm_bases)
    traffic = [arrivals(m, rng) for m in fleet]
    started = time.perf_counter()
    results = {
        p: run(fleet, traffic, p, cfg, args.seed)
        for p in ("always_gpu", "static_format", "manager", "manager_native_only")
    }
    # The manager told not to cover cold starts that break a goal (the rarely used
    # models then scale to zero and their first requests miss): the other side of
    # the trade-off, reported beside the default.
    results["manager_no_cover"] = run(
        fleet,
        traffic,
        "manager_no_cover",
        cfg.model_copy(update={"cover_cold_starts": False}),
        args.seed,
    )
    base = results["always_gpu"]
    floor = gpu_memory_floor(fleet, traffic)
    able = [i for i, m in enumerate(fleet) if warm_p95_meets_goal(m)]
    floor_feasible = gpu_memory_floor([fleet[i] for i in able], [traffic[i] for i in able])
    base_feasible = base["gpu_memory_hours_feasible"]
    loose = gpu_memory_floor_loose(fleet)
    mgr = results["manager"]
    bare = results["manager_no_cover"]

    def saved(held: float) -> float:
        """GPU memory-hours saved against always-on GPU, like for like."""
        return 1 - held / max(base["gpu_memory_hours"], 1e-9)

    def share(policy: str, bound: float) -> float:
        """A policy's saving as a share of the most any policy could save."""
        return round(saved(results[policy]["gpu_memory_hours"]) / max(saved(bound), 1e-9), 3)

    print(
        json.dumps(
            {
                "bench": "fleet_sim",
                "models": args.models,
                "gpus": GPUS,
                "days": 1,
                "profiles": {
                    n: f"{p.key} measured, p50/p95 {p.points[0].p50_ms:.0f}/"
                    f"{p.points[0].p95_ms:.0f} ms"
                    for n, p in bases.items()
                },
                "ggml_wasm": args.ggml_wasm,
                "wasm_profiles": {
                    n: f"{p.key} {p.note or 'measured'}, p50/p95 {p.points[0].p50_ms:.0f}/"
                    f"{p.points[0].p95_ms:.0f} ms"
                    for n, p in wasm_bases.items()
                },
                "policies": results,
                "manager_gpu_hours_saved": round(
                    1 - mgr["gpu_hours"] / max(base["gpu_hours"], 1e-9), 3
                ),
                "manager_gpu_hours_saved_packed": round(
                    1 - mgr["gpu_hours_packed"] / max(base["gpu_hours_packed"], 1e-9), 3
                ),
                "manager_gpu_memory_hours_saved": round(saved(mgr["gpu_memory_hours"]), 3),
                "manager_no_cover_gpu_memory_hours_saved": round(
                    saved(bare["gpu_memory_hours"]), 3
                ),
                # No policy that keeps requests within their goals can hold less GPU
                # memory than this (gpu_memory_floor); the most any could save like for
                # like, and the share of it each manager reached:
                "gpu_memory_hours_floor": round(floor, 2),
                "best_possible_gpu_memory_hours_saved": round(saved(floor), 3),
                # Issue 14's target: >= 99 % within goal and >= 90 % of the best saving.
                "manager_share_of_best_saving": share("manager", floor),
                "manager_native_only_share_of_best_saving": share("manager_native_only", floor),
                # The same against the floor as counted before (gpu_memory_floor_loose:
                # no GPU time for GPU-only models that start in time), for comparison:
                "gpu_memory_hours_floor_loose": round(loose, 2),
                "manager_share_of_best_saving_loose": share("manager", loose),
                # The same over the models whose goal some tier meets warm (no policy
                # keeps the others' goals, so the floor's premise holds for these only):
                "gpu_memory_hours_floor_feasible": round(floor_feasible, 2),
                "manager_share_of_best_saving_feasible": round(
                    (1 - mgr["gpu_memory_hours_feasible"] / max(base_feasible, 1e-9))
                    / max(1 - floor_feasible / max(base_feasible, 1e-9), 1e-9),
                    3,
                ),
                # The target (>= 99 % within goal, >= 40 % fewer GPU-hours than
                # always-on GPU), under each accounting: as deployed, and like for like.
                "target_met_as_deployed": bool(
                    mgr["slo_attainment"] >= 0.99 and mgr["gpu_hours"] <= 0.6 * base["gpu_hours"]
                ),
                "target_met_like_for_like": bool(
                    mgr["slo_attainment"] >= 0.99
                    and mgr["gpu_memory_hours"] <= 0.6 * base["gpu_memory_hours"]
                ),
                "sim_seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
