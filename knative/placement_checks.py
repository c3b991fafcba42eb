"""Which clusters and tiers each model gets in Knative, and the checks on that answer.

The manager (``edgeinfer plan``) decides placements; :func:`default_placement` is the
answer used where no manager's plan is given: one clearly stated rule, so ``render``
works from the spec alone. :func:`check_placement` holds for any answer, the manager's
included: an edge or CPU-only cluster never gets a GPU tier, and a tier's runtime must
be one the model lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import CUDA_CAPABLE, Device, Placement, Tier, TierRole

__all__ = ["check_placement", "default_placement", "placements_from_plan"]


def default_placement(spec: ModelSpec, cluster: ClusterSpec) -> Placement:
    """The placement used without the manager's plan.

    On a cluster that may hold GPU tiers, the first listed runtime that can use CUDA
    runs on the GPU as the primary; a WASM runtime if the model lists one, else that
    same runtime on the CPU, is the bridge that answers while the GPU tier scales from
    zero. On an edge or CPU-only cluster (or for a model with no CUDA-capable runtime)
    the first listed runtime runs on the CPU and there is no bridge.
    """
    if not spec.runtimes:
        raise ValueError(f"model {spec.name!r} has no runtimes (it is served by an endpoint)")
    name = cluster.name
    gpu_runtime = next((r for r in spec.runtimes if r in CUDA_CAPABLE), None)
    if cluster.has_gpu and gpu_runtime is not None:
        bridge_runtime = RuntimeName.WASM if RuntimeName.WASM in spec.runtimes else gpu_runtime
        tiers: tuple[Tier, ...] = (
            Tier(gpu_runtime, Device.CUDA, name),
            Tier(bridge_runtime, Device.CPU, name, TierRole.BRIDGE),
        )
        reason = (
            f"default placement on {name!r} (no manager plan): {gpu_runtime.value} on the GPU, "
            f"{bridge_runtime.value} on the CPU as the bridge while it scales from zero"
        )
    else:
        why = (
            "no GPU tier on an edge/CPU-only cluster" if not cluster.has_gpu else "no CUDA runtime"
        )
        tiers = (Tier(spec.runtimes[0], Device.CPU, name),)
        reason = (
            f"default placement on {name!r} (no manager plan): "
            f"{spec.runtimes[0].value} on the CPU ({why})"
        )
    return Placement(model=spec.name, tiers=tiers, reason=reason)


def check_placement(spec: ModelSpec, placement: Placement, cluster: ClusterSpec) -> list[str]:
    """What is wrong with placing ``spec`` on ``cluster`` as ``placement`` says (empty
    when nothing is)."""
    problems = []
    for tier in placement.tiers:
        if tier.cluster != cluster.name:
            continue
        where = f"model {spec.name!r}: tier {tier.key!r} on cluster {cluster.name!r}"
        if tier.device is Device.CUDA and not cluster.has_gpu:
            kind = "an edge" if "edge" in cluster.labels else "a CPU-only"
            problems.append(f"{where}: {kind} cluster never gets a GPU tier")
        if tier.device is Device.CUDA and tier.runtime not in CUDA_CAPABLE:
            problems.append(f"{where}: the {tier.runtime.value} runtime has no CUDA device")
        if tier.runtime not in spec.runtimes:
            listed = ", ".join(r.value for r in spec.runtimes)
            problems.append(f"{where}: the model does not list that runtime (it lists {listed})")
    return problems


def placements_from_plan(
    path: Path, clusters: tuple[ClusterSpec, ...] = ()
) -> dict[str, Placement]:
    """The manager's placements from ``edgeinfer plan --json`` output (its contract:
    ``{"models": [{"model", "reason", "tiers": [{"tier": "<runtime>-<device>", "role",
    "cluster", "min_scale", "keep_alive_s"}]}]}``). A tier's cluster is a cluster name
    of the config, or the kubeconfig context of one (the manager names clusters it
    probed by context).
    Tiers with no cluster are for this machine and are kept out of Knative."""
    by_context = {c.context: c.name for c in clusters if c.context}
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the manager's plan: {exc}") from None
    out: dict[str, Placement] = {}
    try:
        for entry in doc["models"]:
            tiers = []
            for t in entry["tiers"]:
                runtime, _, device = str(t["tier"]).partition("-")
                where = t.get("cluster")
                if where is not None and where not in {c.name for c in clusters}:
                    where = by_context.get(where, where)
                warm = t.get("min_scale")
                keep = t.get("keep_alive_s")
                tier = Tier(
                    RuntimeName(runtime),
                    Device(device),
                    where,
                    TierRole(t["role"]),
                    None if warm is None else int(warm),
                    None if keep is None else float(keep),
                )
                tiers.append(tier)
            out[entry["model"]] = Placement(entry["model"], tuple(tiers), entry.get("reason", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not the output of 'edgeinfer plan --json' ({type(exc).__name__}: {exc})"
        ) from None
    return out
