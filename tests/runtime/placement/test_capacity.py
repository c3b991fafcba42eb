"""runtime.placement.capacity: what each kind of hardware allows a model (host CPU, host
GPU, cluster or edge-site CPU nodes, cluster GPU nodes), each kind on its own."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.placement.capacity import (
    ASSUMED_NODE_GPU_MIB,
    Room,
    room,
    room_on_cluster_cpu,
    room_on_cluster_gpu,
    room_on_host_cpu,
    room_on_host_gpu,
)
from runtime.placement.inventory import CpuInfo, Inventory, NodeInfo
from runtime.placement.policy import PolicyConfig, choose_runtime
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import Device, Tier
from tests.runtime.placement.test_policy import CPU_ONLY, FULL_GPU, ONE_GPU, SITES, chat, profile

CPU_300 = profile("llama", p50=100, memory=300)
GPU_300 = profile("llama", "cuda", p50=10, memory=300)
NO_GPU_300 = "no GPU in dc has 300 MiB"


def host(cores: int, free_mib: int) -> Inventory:
    return Inventory(cpu=CpuInfo(cores=cores), memory_total_mib=65536, memory_free_mib=free_mib)


def threaded(spec: ModelSpec, threads: int | None) -> ModelSpec:
    return spec.model_copy(update={"options": spec.options.model_copy(update={"threads": threads})})


# (cores, free MiB, options.threads, profile MiB) -> (replicas, at once), or the reason.
# The core budget's arithmetic (runtime.scaling.cores): a replica runs options.threads,
# else every core; resources.cpu (2 in chat()) is a cluster's request, not counted here.
HOST_CPU: list[tuple[int, int, int | None, float, tuple[int, int] | str]] = [
    (8, 12000, 2, 300, (4, 4)),  # cores bound
    (8, 700, 2, 300, (2, 4)),  # memory bound
    (8, 12000, None, 300, (1, 1)),  # no threads set: every core, one replica at a time
    (8, 12000, 3, 300, (2, 2)),  # whole replicas only
    (2, 12000, 8, 300, "runs 8 threads (options.threads) and this host has 2 cores: it can never"),
    (2, 256, 1, 300, "needs 300 MiB of memory, 256 MiB free"),
]


@pytest.mark.parametrize(("cores", "free", "threads", "mib", "expected"), HOST_CPU)
def test_room_on_host_cpu(
    cores: int, free: int, threads: int | None, mib: float, expected: Any
) -> None:
    spec = threaded(chat(), threads)
    got = room_on_host_cpu(spec, profile("llama", p50=100, memory=mib), host(cores, free))
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        replicas, at_once = expected
        per = threads or cores
        assert got == Room(
            replicas, mib, note=f"{cores} cores / {per} threads a replica: {at_once} at once"
        )


@pytest.mark.parametrize(("cores", "threads"), [(2, None), (8, None), (8, 2), (8, 3), (4, 1)])
def test_a_plan_never_places_more_threads_than_the_cores_and_says_so(
    cores: int, threads: int | None
) -> None:
    """More load than the host can take: the native candidate gets what the cores hold
    at once, and its reason gives the arithmetic (the supervisor's budget would not
    start more: tests/runtime/scaling/test_cores.py)."""
    spec = threaded(chat(scaling={"max-scale": 0}), threads)
    d = choose_runtime(
        spec, (profile("llama", p50=100),), host(cores, 65536), PolicyConfig(), 0.0, load_rps=1e4
    )
    (native,) = [
        c for c in d.candidates if c.tier.runtime is RuntimeName.LLAMA and c.tier.device == "cpu"
    ]
    per = threads or cores
    assert native.fits and native.replicas * per <= cores, native
    assert native.replicas == cores // per, native
    assert f"{cores} cores / {per} threads a replica: {cores // per} at once" in native.reason


def test_room_on_host_gpu_packs_or_says_why_not() -> None:
    got = room_on_host_gpu(chat(), GPU_300, ONE_GPU, (), 0)
    assert got == Room(1, 300, 24576.0, gpu=0)
    full = room_on_host_gpu(chat(), GPU_300, FULL_GPU, (), 0)
    assert isinstance(full, str) and full


def edge(*nodes: NodeInfo) -> Inventory:
    return CPU_ONLY.model_copy(update={"nodes": nodes})


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ((NodeInfo(name="pi-1", cluster="edge", cpu_cores=8, memory_mib=8192),), 4),
        (
            (
                NodeInfo(name="pi-1", cluster="edge", cpu_cores=3, memory_mib=8192),
                NodeInfo(name="pi-2", cluster="edge", cpu_cores=5, memory_mib=8192),
            ),
            3,  # whole slots per node: 1 + 2
        ),
        (
            (NodeInfo(name="pi-1", cluster="edge", cpu_cores=8, memory_mib=200),),
            "no node in edge has 2 cores and 300 MiB",
        ),
        (
            (NodeInfo(name="pi-1", cluster="other", cpu_cores=8, memory_mib=8192),),
            "no node in edge has 2 cores and 300 MiB",
        ),
    ],
)
def test_room_on_cluster_cpu(nodes: tuple[NodeInfo, ...], expected: Any) -> None:
    got = room_on_cluster_cpu(chat(), CPU_300, edge(*nodes), "edge")
    assert got == (expected if isinstance(expected, str) else Room(expected, 300))


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (
            (NodeInfo(name="g", cluster="dc", gpus=2, gpu_memory_mib=24576),),
            Room(2, 300, 24576.0),
        ),
        # A node that does not label its GPU memory: taken to fit, priced as assumed.
        ((NodeInfo(name="g", cluster="dc", gpus=1),), Room(1, 300, float(ASSUMED_NODE_GPU_MIB))),
        (
            (NodeInfo(name="g", cluster="dc", gpus=4, gpu_memory_mib=256),),
            "no GPU in dc has 300 MiB",
        ),
        ((NodeInfo(name="c", cluster="dc", gpus=0),), "no GPU in dc has 300 MiB"),
    ],
)
def test_room_on_cluster_gpu(nodes: tuple[NodeInfo, ...], expected: Room | str) -> None:
    assert room_on_cluster_gpu(chat(), GPU_300, edge(*nodes), "dc") == expected


@pytest.mark.parametrize(
    ("tier", "max_scale", "expected"),
    [
        (Tier(RuntimeName.LLAMA, Device.CPU), 0, 4),  # unbounded: the host bounds it
        (Tier(RuntimeName.LLAMA, Device.CPU), 2, 2),  # max-scale bounds it
        (Tier(RuntimeName.LLAMA, Device.CPU, cluster="edge"), 3, 3),
        (Tier(RuntimeName.LLAMA, Device.CUDA, cluster="dc"), 0, 2),
        (Tier(RuntimeName.LLAMA, Device.CUDA, cluster="dc"), 1, 1),
    ],
)
def test_room_dispatches_by_kind_and_max_scale_bounds_every_kind(
    tier: Tier, max_scale: int, expected: int
) -> None:
    spec = threaded(chat(scaling={"min-scale": 0, "max-scale": max_scale}), 2)
    prof = GPU_300 if tier.device is Device.CUDA else CPU_300
    got = room(spec, tier, prof, SITES, (), 512)
    assert isinstance(got, Room)
    assert got.max_replicas == expected


def test_a_host_gpu_tier_on_a_host_without_one_does_not_fit() -> None:
    got = room(chat(), Tier(RuntimeName.LLAMA, Device.CUDA), GPU_300, CPU_ONLY, (), 512)
    assert isinstance(got, str) and got
