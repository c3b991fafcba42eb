"""The hardware inventory: this host, written descriptions, Kubernetes nodes; and GPU
packing over an inventory's GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.backends.devices import cuda_available
from runtime.errors import ConfigError
from runtime.placement.gpu_packing import Resident, fit, pick_victims
from runtime.placement.inventory import GpuInfo, load_hardware, node_info, probe_gpus, probe_local


def test_this_host() -> None:
    inv = probe_local()
    assert inv.cpu.cores >= 1 and inv.memory_total_mib >= inv.memory_free_mib > 0
    assert inv.source == "this host"
    assert "MiB free" in inv.describe()


def test_no_gpu_means_none_reported() -> None:
    if cuda_available():
        pytest.skip("this host has a GPU")
    assert probe_gpus() == ()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU; this host has none")
def test_gpus_through_nvml() -> None:  # pragma: no cover - GPU hosts
    gpus = probe_gpus()
    assert gpus and all(g.memory_total_mib >= g.memory_free_mib for g in gpus)


def test_written_inventory(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text(
        "cpu: {model: Cortex-A78, cores: 8, architecture: aarch64, simd: [neon]}\n"
        "memory_total_mib: 8192\n"
        "gpus:\n  - {name: Orin, memory_total_mib: 16384}\n"
    )
    inv = load_hardware(f)
    assert inv.cpu.architecture == "aarch64" and inv.memory_free_mib == 8192
    assert inv.gpus[0].memory_free_mib == 16384 and inv.has_gpu
    assert inv.source == str(f)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cpu: {cores: 0}\n", "cpu.cores"),
        ("gpus: [{name: x}]\n", "gpus.0.memory_total_mib"),
        ("- a\n- b\n", "expected a mapping"),
        ("cpu: [\n", "not valid YAML"),
        ("disks: 3\n", "disks"),
    ],
)
def test_written_inventory_errors_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml") as err:
        load_hardware(f)
    assert fragment in err.value.message


def test_missing_hardware_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_hardware(tmp_path / "nope.yaml")


def test_kubernetes_node() -> None:
    node = {
        "metadata": {
            "name": "gpu-node-1",
            "labels": {
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "eu-west-1a",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.memory": "81559",
            },
        },
        "status": {"allocatable": {"cpu": "31800m", "memory": "257Gi", "nvidia.com/gpu": "8"}},
    }
    n = node_info(node, "dc")
    assert (n.name, n.cluster, n.gpus, n.site) == ("gpu-node-1", "dc", 8, "eu-west-1a")
    assert n.cpu_cores == pytest.approx(31.8) and n.memory_mib == 257 * 1024
    assert n.gpu_memory_mib == 81559 and n.gpu_product == "NVIDIA-H100-80GB-HBM3"
    edge = node_info(
        {
            "metadata": {"name": "pi", "labels": {"edgeinfer.dev/site": "shop-12"}},
            "status": {"nodeInfo": {"architecture": "arm64"}},
        },
        "edge",
    )
    assert (edge.gpus, edge.architecture, edge.site) == (0, "arm64", "shop-12")


GPU = GpuInfo(index=0, memory_total_mib=10000, memory_free_mib=10000)
GPU1 = GpuInfo(index=1, memory_total_mib=10000, memory_free_mib=10000)


@pytest.mark.parametrize(
    ("gpus", "resident", "need", "gpu", "evict"),
    [
        ((GPU,), (), 4000, 0, ()),
        # Best fit: the fuller GPU that still fits keeps the other's room whole.
        ((GPU, GPU1), (Resident("a", 1, 5000, 0),), 4000, 1, ()),
        ((GPU,), (Resident("a", 0, 5000, 1), Resident("b", 0, 4000, 2)), 4000, 0, ("a",)),
        # Least recently used first, and as many as it takes.
        (
            (GPU,),
            (Resident("a", 0, 3000, 5), Resident("b", 0, 3000, 1), Resident("c", 0, 3000, 3)),
            7000,
            0,
            ("b", "c"),
        ),
        # Busy models stay; then there is no room.
        ((GPU,), (Resident("a", 0, 9000, 1, busy=True),), 4000, None, ()),
        # Larger than any GPU.
        ((GPU,), (), 20000, None, ()),
        # Memory used by something else counts.
        ((GpuInfo(index=0, memory_total_mib=10000, memory_free_mib=1000),), (), 4000, None, ()),
    ],
)
def test_fit(gpus, resident, need, gpu, evict) -> None:  # type: ignore[no-untyped-def]
    f = fit(gpus, resident, need)
    assert (f.gpu, f.evict) == (gpu, evict), f.reason
    if gpu is not None:
        freed = sum(r.memory_mib for r in resident if r.model in evict)
        used = sum(r.memory_mib for r in resident if r.gpu == gpu) - freed
        assert used + need <= 10000  # never over-committed


def test_pick_victims_none_when_not_enough() -> None:
    assert pick_victims((Resident("a", 0, 100, 0),), 0, 500) is None
    assert pick_victims((Resident("a", 0, 100, 0),), 0, 50) == (Resident("a", 0, 100, 0),)


def test_a_model_is_not_in_the_way_of_itself() -> None:
    # The driver reports 9000 MiB used, 8000 of them by the model being re-placed.
    gpu = GpuInfo(index=0, memory_total_mib=10000, memory_free_mib=1000)
    resident = (Resident("me", 0, 8000, 0, busy=True),)
    assert fit((gpu,), resident, 8000, model="me").gpu == 0
    assert fit((gpu,), resident, 8000, model="other").gpu is None
