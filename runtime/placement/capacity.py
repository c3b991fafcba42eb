"""What each kind of hardware allows one model: the room for its replicas.

The policy (:mod:`runtime.placement.policy`) asks :func:`room` for every candidate
tier; each kind of hardware has its own rule: this host's CPU (free memory, and its
cores counted as the supervisor's core budget counts them, :mod:`runtime.scaling.cores`:
replicas x threads never exceed the cores), this host's GPUs (packed by
:mod:`runtime.placement.gpu_packing`), a cluster's or edge site's CPU nodes (whole
replica-sized slots per node) and a cluster's GPU nodes. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.placement.gpu_packing import Resident, fit
from runtime.placement.inventory import Inventory
from runtime.placement.profiles import Profile
from runtime.scaling.cores import replica_threads
from runtime.scaling.kpa import UNBOUNDED
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Device, Tier

__all__ = [
    "ASSUMED_NODE_GPU_MIB",
    "Room",
    "gpu_memory_mib",
    "host_memory_mib",
    "replica_cores",
    "room",
    "room_on_cluster_cpu",
    "room_on_cluster_gpu",
    "room_on_host_cpu",
    "room_on_host_gpu",
]

# GPU memory of a cluster node whose label does not say (an 80 GiB data-center GPU):
# what a GPU tier there is priced against.
ASSUMED_NODE_GPU_MIB = 81920


def replica_cores(spec: ModelSpec, profile: Profile, inv: Inventory) -> float:
    """Cores one CPU replica takes: as the spec says, else as many as the profile was
    measured on (its latency holds for that many), else all of this host's."""
    return spec.resources.cpu or spec.options.threads or profile.cpu_cores or inv.cpu.cores


@dataclass(frozen=True)
class Room:
    """What the hardware of one tier allows a model: at most ``max_replicas``, each
    holding ``need_mib`` (of GPU memory on a GPU tier, host memory on a CPU tier); on
    this host's GPU, which one (``gpu``, of ``gpu_total_mib``) and whom it evicts;
    ``note``: the arithmetic behind ``max_replicas`` where the plan should show it."""

    max_replicas: int
    need_mib: float
    gpu_total_mib: float = 0.0
    gpu: int | None = None
    evict: tuple[str, ...] = ()
    note: str = ""


def host_memory_mib(spec: ModelSpec, profile: Profile) -> float:
    """Host memory one CPU replica holds: the most of what was measured and declared."""
    return max(profile.rss_mib, profile.memory_mib, float(spec.resources.memory_mib or 0))


def gpu_memory_mib(spec: ModelSpec, profile: Profile) -> float:
    """GPU memory one replica holds: measured, else declared, else its host memory."""
    return profile.gpu_memory_mib or (spec.resources.gpu_memory_mib or profile.memory_mib)


def room_on_host_gpu(
    spec: ModelSpec,
    profile: Profile,
    inv: Inventory,
    resident: tuple[Resident, ...],
    reserve_mib: float,
) -> Room | str:
    """This host's GPUs, packed (:mod:`gpu_packing`, ``reserve_mib`` kept free on each;
    ``resident`` the models already there): one replica per GPU at most."""
    need = gpu_memory_mib(spec, profile)
    placed = fit(inv.gpus, resident, need, reserve_mib=reserve_mib, model=spec.name)
    if placed.gpu is None:
        return placed.reason
    total = next(g.memory_total_mib for g in inv.gpus if g.index == placed.gpu)
    return Room(len(inv.gpus), need, float(total), placed.gpu, placed.evict)


def room_on_cluster_gpu(
    spec: ModelSpec, profile: Profile, inv: Inventory, cluster: str
) -> Room | str:
    """A cluster's GPU nodes with enough memory per GPU (a node whose label does not
    say is taken to have it, and priced as :data:`ASSUMED_NODE_GPU_MIB`)."""
    need = gpu_memory_mib(spec, profile)
    nodes = [n for n in inv.nodes if n.cluster == cluster and n.gpus]
    sized = [n for n in nodes if n.gpu_memory_mib is None or n.gpu_memory_mib >= need]
    if not sized:
        return f"no GPU in {cluster} has {need:.0f} MiB"
    total = float(sized[0].gpu_memory_mib or ASSUMED_NODE_GPU_MIB)
    return Room(sum(n.gpus for n in sized), need, total)


def room_on_cluster_cpu(
    spec: ModelSpec, profile: Profile, inv: Inventory, cluster: str
) -> Room | str:
    """A cluster's or edge site's nodes: as many replicas as whole replica-sized slots
    of cores fit on the nodes with the memory."""
    need = host_memory_mib(spec, profile)
    cores = replica_cores(spec, profile, inv)
    nodes = [n for n in inv.nodes if n.cluster == cluster and n.memory_mib >= need]
    slots = sum(int(n.cpu_cores // cores) for n in nodes)
    if not slots:
        return f"no node in {cluster} has {cores:g} cores and {need:.0f} MiB"
    return Room(slots, need)


def room_on_host_cpu(spec: ModelSpec, profile: Profile, inv: Inventory) -> Room | str:
    """This host's cores and free memory. The cores are the supervisor's budget
    (:class:`runtime.scaling.cores.CoreBudget`), with its arithmetic: a replica runs
    ``options.threads``, else every core (``resources.cpu`` is a cluster's request and
    does not count here), and replicas x threads never exceed the cores; a replica
    wider than the cores can never start."""
    need = host_memory_mib(spec, profile)
    if need > inv.memory_free_mib:
        return f"needs {need:.0f} MiB of memory, {inv.memory_free_mib} MiB free"
    cores = inv.cpu.cores
    threads = replica_threads(spec, cores)
    if threads > cores:
        return (
            f"a replica runs {threads} threads (options.threads) and this host has {cores} "
            "cores: it can never start"
        )
    at_once = cores // threads
    return Room(
        min(at_once, max(1, int(inv.memory_free_mib // max(need, 1)))),
        need,
        note=f"{cores} cores / {threads} threads a replica: {at_once} at once",
    )


def room(
    spec: ModelSpec,
    tier: Tier,
    profile: Profile,
    inv: Inventory,
    resident: tuple[Resident, ...],
    reserve_mib: float,
) -> Room | str:
    """What ``tier``'s hardware allows the model, or why it does not fit; max-scale
    bounds the replicas on every kind."""
    if tier.device is Device.CUDA:
        got = (
            room_on_host_gpu(spec, profile, inv, resident, reserve_mib)
            if tier.cluster is None
            else room_on_cluster_gpu(spec, profile, inv, tier.cluster)
        )
    elif tier.cluster is not None:
        got = room_on_cluster_cpu(spec, profile, inv, tier.cluster)
    else:
        got = room_on_host_cpu(spec, profile, inv)
    if isinstance(got, str):
        return got
    limit = spec.scaling.max_scale or UNBOUNDED
    return replace(got, max_replicas=min(limit, got.max_replicas))
