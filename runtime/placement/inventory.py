"""What hardware is really there: the manager's view of where models can run.

An :class:`Inventory` is a frozen snapshot: this host's CPU (model, cores, SIMD
features), memory, GPUs (through NVIDIA's management library, ``nvidia-ml-py``, when a
driver is present) and, for clusters, the nodes' allocatable ``nvidia.com/gpu``,
architecture and site labels (read through the ``kubernetes`` client).

Three ways to get one: :func:`probe_local` reads this host; :func:`probe_cluster` reads
the nodes of a cluster from a kubeconfig/context; :func:`load_hardware` reads a written
description (YAML or JSON, the same fields as :class:`Inventory`), to plan for an edge
site from a laptop and for tests. The manager takes its probe as an argument, so a
running gateway can be handed any of these.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from runtime.errors import ConfigError
from runtime.spec.frozen import Frozen

__all__ = [
    "CpuInfo",
    "GpuInfo",
    "Inventory",
    "NodeInfo",
    "load_hardware",
    "probe_cluster",
    "probe_gpus",
    "probe_local",
]

# SIMD features that matter to the runtimes' CPU kernels (llama.cpp, onnxruntime, wasm).
_SIMD = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "neon",
    "asimd",
    "sve",
)
GPU_RESOURCE = "nvidia.com/gpu"
SITE_LABELS = ("edgeinfer.dev/site", "topology.kubernetes.io/zone", "topology.kubernetes.io/region")


class CpuInfo(Frozen):
    model: str = "unknown"
    cores: int = Field(1, ge=1)
    architecture: str = "x86_64"
    simd: tuple[str, ...] = ()


class GpuInfo(Frozen):
    index: int = Field(0, ge=0)
    name: str = "GPU"
    memory_total_mib: int = Field(gt=0)
    memory_free_mib: int = Field(ge=0)
    utilization_pct: float = Field(0.0, ge=0, le=100)


class NodeInfo(Frozen):
    """One cluster node, as its Kubernetes Node object describes it."""

    name: str
    cluster: str
    architecture: str = "amd64"
    site: str | None = None
    cpu_cores: float = Field(0.0, ge=0)
    memory_mib: int = Field(0, ge=0)
    gpus: int = Field(0, ge=0, description="allocatable nvidia.com/gpu")
    gpu_product: str | None = None
    gpu_memory_mib: int | None = Field(None, gt=0, description="per GPU, from its label")


class Inventory(Frozen):
    """Everything the policy may place a model on, at one moment."""

    cpu: CpuInfo = CpuInfo()
    memory_total_mib: int = Field(1024, gt=0)
    memory_free_mib: int = Field(1024, ge=0)
    gpus: tuple[GpuInfo, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
    source: str = Field("", description="where this snapshot came from")

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus) or any(n.gpus for n in self.nodes)

    def gpu_clusters(self) -> tuple[str, ...]:
        """Clusters with at least one allocatable GPU, in order of first appearance."""
        return tuple(dict.fromkeys(n.cluster for n in self.nodes if n.gpus))

    def describe(self) -> str:
        parts = [
            f"{self.cpu.cores} x {self.cpu.model} ({self.cpu.architecture}"
            + (f", {' '.join(self.cpu.simd)}" if self.cpu.simd else "")
            + ")",
            f"{self.memory_free_mib}/{self.memory_total_mib} MiB free",
        ]
        parts += [
            f"GPU{g.index} {g.name} {g.memory_free_mib}/{g.memory_total_mib} MiB free, "
            f"{g.utilization_pct:.0f}% busy"
            for g in self.gpus
        ]
        if not self.gpus:
            parts.append("no GPU")
        for n in self.nodes:
            gpu = f", {n.gpus} x {n.gpu_product or GPU_RESOURCE}" if n.gpus else ""
            parts.append(f"node {n.cluster}/{n.name} ({n.architecture}{gpu})")
        return "; ".join(parts)


# -- this host ---------------------------------------------------------------------------


def probe_local(gpus: Callable[[], tuple[GpuInfo, ...]] | None = None) -> Inventory:
    """This host now: CPU from ``/proc/cpuinfo``, memory from ``/proc/meminfo``, GPUs
    from NVML (none when the library or a driver is missing)."""
    total, free = _meminfo()
    return Inventory(
        cpu=_cpuinfo(),
        memory_total_mib=total,
        memory_free_mib=free,
        gpus=(gpus or probe_gpus)(),
        source="this host",
    )


def _cpuinfo() -> CpuInfo:
    model, flags = platform.processor() or "unknown", set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and model in ("unknown", ""):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(
        model=model or "unknown",
        cores=max(1, cores or 1),
        architecture=platform.machine() or "unknown",
        simd=tuple(f for f in _SIMD if f in flags),
    )


def _meminfo() -> tuple[int, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        return 1024, 1024
    total = values.get("MemTotal", 1024)
    return total, values.get("MemAvailable", values.get("MemFree", total))


def probe_gpus() -> tuple[GpuInfo, ...]:
    """GPUs through NVML; () when ``nvidia-ml-py`` or the driver is not there."""
    try:
        import pynvml  # the nvidia-ml-py package
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ()  # no driver: a CPU-only host
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                util = 0.0  # not supported on some MIG slices
            name = pynvml.nvmlDeviceGetName(handle)
            found.append(
                GpuInfo(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mib=max(1, int(mem.total) >> 20),
                    memory_free_mib=int(mem.free) >> 20,
                    utilization_pct=min(100.0, util),
                )
            )
        return tuple(found)
    except pynvml.NVMLError:
        return ()
    finally:
        pynvml.nvmlShutdown()


# -- clusters ----------------------------------------------------------------------------


def probe_cluster(
    *, kubeconfig: str | None = None, context: str | None = None, cluster: str | None = None
) -> tuple[NodeInfo, ...]:
    """The nodes of one cluster through the ``kubernetes`` client. ``cluster`` names
    them in placements (default: the context's name). Raises :class:`ConfigError` when
    the kubeconfig cannot be read or the API server does not answer."""
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise ConfigError(f"reading a cluster needs the kubernetes client: {exc}") from exc
    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, OSError) as exc:
        raise ConfigError(f"kubeconfig {kubeconfig or '(default)'}: {exc}") from exc
    name = cluster or context or (active or {}).get("name", "cluster")
    try:
        with api_client:
            items = client.CoreV1Api(api_client).list_node(_request_timeout=10).items
    except (ApiException, OSError) as exc:
        raise ConfigError(f"cluster {name!r}: cannot list nodes: {exc}") from exc
    except Exception as exc:  # urllib3's connection errors are not OSErrors
        raise ConfigError(f"cluster {name!r}: cannot list nodes: {exc}") from exc
    return tuple(node_info(n.to_dict(), name) for n in items)


def node_info(node: dict[str, Any], cluster: str) -> NodeInfo:
    """One Node object (as the client's ``to_dict`` or the API's JSON gives it)."""
    meta = node.get("metadata") or {}
    labels: dict[str, str] = meta.get("labels") or {}
    status = node.get("status") or {}
    alloc: dict[str, str] = status.get("allocatable") or {}
    info = status.get("node_info") or status.get("nodeInfo") or {}
    gpu_mem = labels.get("nvidia.com/gpu.memory")
    return NodeInfo(
        name=meta.get("name", "node"),
        cluster=cluster,
        architecture=labels.get("kubernetes.io/arch") or info.get("architecture") or "amd64",
        site=next((labels[k] for k in SITE_LABELS if labels.get(k)), None),
        cpu_cores=_quantity(alloc.get("cpu", "0")),
        memory_mib=int(_quantity(alloc.get("memory", "0")) / (1 << 20)),
        gpus=int(_quantity(alloc.get(GPU_RESOURCE, "0"))),
        gpu_product=labels.get("nvidia.com/gpu.product"),
        gpu_memory_mib=int(gpu_mem) if gpu_mem and gpu_mem.isdigit() else None,
    )


_SUFFIX = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 1e-3,
}


def _quantity(text: str) -> float:
    """A Kubernetes resource quantity ("3800m", "16Gi", "2") as a number."""
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIX[suffix]
    try:
        return float(text)
    except ValueError:
        return 0.0


# -- written descriptions ----------------------------------------------------------------


def load_hardware(path: str | Path) -> Inventory:
    """An inventory described in a file (YAML or JSON with :class:`Inventory`'s fields).
    Raises :class:`ConfigError` naming the file and the field at fault."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        raw = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read hardware file: {exc.strerror or exc}") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping (cpu, memory_total_mib, gpus, nodes)")
    raw.setdefault("source", str(file))
    raw.setdefault("memory_free_mib", raw.get("memory_total_mib", 1024))
    for gpu in raw.get("gpus") or []:
        if isinstance(gpu, dict):
            gpu.setdefault("memory_free_mib", gpu.get("memory_total_mib", 0))
    try:
        return Inventory.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError.invalid(str(file), exc) from None
