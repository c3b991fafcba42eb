"""The worker in a pod: its arguments and its resource requests, for Knative Services
and SpinApps alike."""

from __future__ import annotations

from typing import Any

from runtime.clusters import ClusterSpec
from runtime.placement import Device, Tier
from runtime.spec import ModelSpec

__all__ = ["CONFIG_MOUNT", "PORT", "resources", "worker_args"]

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


def resources(spec: ModelSpec, tier: Tier, cluster: ClusterSpec) -> dict[str, Any]:
    """Requests and limits: cores from the spec (``resources.cpu`` or ``threads``, else
    one), memory from ``resources.memory_mib`` (requested and limited alike, so a
    replica is not evicted for using what it asked for), the GPU on CUDA tiers."""
    cpu = spec.resources.cpu or spec.options.threads or 1
    requests: dict[str, str] = {"cpu": f"{cpu:g}"}
    limits: dict[str, str] = {}
    if spec.resources.memory_mib:
        requests["memory"] = limits["memory"] = f"{spec.resources.memory_mib}Mi"
    if tier.device is Device.CUDA:
        limits[cluster.gpu.resource] = str(cluster.gpu.count)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}
