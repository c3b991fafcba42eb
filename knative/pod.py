"""The worker in a pod: its arguments and its resource requests, for Knative Services
and SpinApps alike."""

from __future__ import annotations

from typing import Any

from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Device, Tier

__all__ = ["CONFIG_MOUNT", "PORT", "cores", "resources", "worker_args"]

PORT = 8080  # Knative's default $PORT; the worker listens there
CONFIG_MOUNT = "/etc/edgeinfer"


def worker_args(spec: ModelSpec, tier: Tier) -> list[str]:
    """The container's arguments: the image's entrypoint is ``edgeinfer``."""
    return [
        "worker",
        "--model",
        spec.name,
        "--config",
        f"{CONFIG_MOUNT}/config.yaml",
        "--runtime",
        tier.runtime.value,
        "--device",
        tier.device.value,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
    ]


def cores(spec: ModelSpec) -> float:
    """CPU cores a replica asks for: ``resources.cpu``, else ``options.threads``, else
    two for a generative model (token generation is compute-bound) and one otherwise."""
    return spec.resources.cpu or spec.options.threads or (2 if spec.generative else 1)


def resources(spec: ModelSpec, tier: Tier, cluster: ClusterSpec) -> dict[str, Any]:
    """Requests and limits: :func:`cores`; memory from ``resources.memory_mib``
    (requested and limited alike, so a replica is not evicted for using what it asked
    for; CUDA tiers add the CUDA runtime's own host memory); the GPU on CUDA tiers."""
    requests: dict[str, str] = {"cpu": f"{cores(spec):g}"}
    limits: dict[str, str] = {}
    if spec.resources.memory_mib:
        memory = spec.resources.memory_mib
        if tier.device is Device.CUDA:
            memory += cluster.gpu.host_memory_overhead_mib
        requests["memory"] = limits["memory"] = f"{memory}Mi"
    if tier.device is Device.CUDA:
        limits[cluster.gpu.resource] = str(cluster.gpu.count)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}
