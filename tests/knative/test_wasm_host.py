"""knative.wasm_host: with ``wasm.shared_host`` a cluster gets one multi-model WASM host
Service instead of one Service per WASM model; checked by Knative's rules, against the
real Knative Service CRD, and applied to a real kube-apiserver."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from knative.apply import apply_manifests
from knative.kube import connect
from knative.router import ClusterRouter
from knative.status import service_status
from knative.targets import Overrides, render_config, select_clusters
from knative.wasm_host import HOST_SERVICE
from runtime.scaling.replica import free_port
from runtime.spec.model import RuntimeName, load_config
from runtime.spec.placement import Device, Placement, Tier, TierRole
from tests.knative.conftest import write_config

PACKAGES = Path(__file__).resolve().parents[2] / "wasm-modules" / "packages"


def _engine(name: str, package: str, **scaling: Any) -> dict[str, Any]:
    embedding = package == "minilm-engine"
    return {
        "name": name,
        "task": "embedding" if embedding else "classify",
        "artifacts": {"wasm": str(PACKAGES / package)},
        "runtimes": ["wasm"],
        "scaling": {
            "min-scale": 0,
            "initial-scale": 0,
            "max-scale": 2,
            "timeout": "60s",
            **scaling,
        },
        "resources": {"memory_mib": 128},
        "options": {"max_input_tokens": 256} if embedding else {"preprocess": "magika"},
    }


NATIVE = {  # native first; its WASM form can bridge its cold starts
    "name": "magika",
    "task": "classify",
    "artifacts": {
        "onnx": "pkg://magika/models/standard_v3_3/model.onnx",
        "wasm": str(PACKAGES / "magika-engine"),
    },
    "runtimes": ["onnx", "wasm"],
    "options": {"preprocess": "magika"},
}


def _config(tmp_path: Path, shared: bool = True, **cluster: Any) -> Any:
    models = [
        _engine("tenant-a", "minilm-engine"),
        _engine("tenant-b", "magika-engine", **{"max-scale": 3, "timeout": "120s"}),
        NATIVE,
    ]
    clusters = [
        {
            "name": "edge",
            "labels": ["edge"],
            "cpu_only": True,
            "wasm": {"shared_host": shared, "runtime_class_name": "gvisor"},
            **cluster,
        }
    ]
    return load_config(write_config(tmp_path, {"models": models, "clusters": clusters}))


def _by_kind(manifests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in manifests:
        out.setdefault(m["kind"], []).append(m)
    return out


def _host(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == HOST_SERVICE
    )


def test_one_host_service_serves_every_wasm_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    result = render_config(cfg, select_clusters(cfg, Overrides()))["edge"]
    assert not result.errors, [str(e) for e in result.errors]
    kinds = _by_kind(result.manifests)
    names = [s["metadata"]["name"] for s in kinds["Service"]]
    # The native model keeps its own Service; the two WASM models share one.
    assert sorted(names) == sorted([HOST_SERVICE, "magika-onnx-cpu"])
    host = next(s for s in kinds["Service"] if s["metadata"]["name"] == HOST_SERVICE)
    pod = host["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["worker", "--host-wasm", "--preload"]
    assert container["image"] == cfg.clusters[0].images.cpu
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["containerConcurrency"] == 0  # the models share the pod
    assert pod["timeoutSeconds"] == 120  # the longest of its models
    assert container["resources"]["requests"]["memory"] == "256Mi"  # 128 + 128
    notes = host["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/max-scale"] == "3"
    assert notes["autoscaling.knative.dev/min-scale"] == "0"
    # Its ConfigMap lists both WASM models, as the host in the pod reads them.
    config_map = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"] == HOST_SERVICE)
    listed = yaml.safe_load(config_map["data"]["config.yaml"])["models"]
    assert [m["name"] for m in listed] == ["tenant-a", "tenant-b"]
    assert host["metadata"]["annotations"]["edgeinfer.dev/models"] == "tenant-a, tenant-b"


def test_min_scale_comes_from_the_plan(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    warm = Tier(RuntimeName.WASM, Device.CPU, cluster="edge", min_scale=1)
    cold = Tier(RuntimeName.WASM, Device.CPU, cluster="edge")
    plan = {
        "tenant-a": Placement("tenant-a", (warm,), "rarely used: WASM, kept warm at the edge"),
        "tenant-b": Placement("tenant-b", (cold,), "WASM"),
        "magika": Placement(
            "magika",
            (Tier(RuntimeName.ONNX, Device.CPU, cluster="edge"),),
            "native",
        ),
    }
    result = render_config(cfg, select_clusters(cfg, Overrides()), plan)["edge"]
    host = _host(result.manifests)
    notes = host["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "1"
    # A bridge tier on the host keeps it warm at the cluster's bridge floor.
    bridge = Tier(RuntimeName.WASM, Device.CPU, cluster="edge", role=TierRole.BRIDGE)
    plan["magika"] = Placement(
        "magika", (Tier(RuntimeName.ONNX, Device.CPU, cluster="edge"), bridge), "bridge"
    )
    plan["tenant-a"] = Placement("tenant-a", (cold,), "WASM")
    result = render_config(cfg, select_clusters(cfg, Overrides()), plan)["edge"]
    host = _host(result.manifests)
    assert not result.errors, [str(e) for e in result.errors]
    listed = yaml.safe_load(
        next(
            m
            for m in result.manifests
            if m["kind"] == "ConfigMap" and m["metadata"]["name"] == HOST_SERVICE
        )["data"]["config.yaml"]
    )["models"]
    assert [m["name"] for m in listed] == ["tenant-a", "tenant-b", "magika"]
    floor = cfg.clusters[0].knative.bridge_min_scale
    assert host["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/min-scale"
    ] == str(floor)


def test_without_shared_host_each_wasm_model_has_its_service(tmp_path: Path) -> None:
    cfg = _config(tmp_path, shared=False)
    result = render_config(cfg, select_clusters(cfg, Overrides()))["edge"]
    names = {m["metadata"]["name"] for m in result.manifests if m["kind"] == "Service"}
    assert names == {"tenant-a-wasm-cpu", "tenant-b-wasm-cpu", "magika-onnx-cpu"}


def test_host_service_fits_the_knative_crd(
    tmp_path: Path, service_schema: jsonschema.Draft7Validator
) -> None:
    cfg = _config(tmp_path)
    result = render_config(cfg, select_clusters(cfg, Overrides()))["edge"]
    for m in result.manifests:
        if m["kind"] == "Service":
            service_schema.validate(m)


@pytest.mark.slow
def test_host_service_applies_to_a_real_api_server(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg = _config(tmp_path, kubeconfig=kubeconfig, namespace=namespace)
    cluster = connect(cfg.clusters[0])
    manifests = render_config(cfg, cfg.clusters)["edge"].manifests
    first = apply_manifests(cluster, manifests)
    assert {c.action for c in first} == {"create"}
    second = apply_manifests(cluster, manifests)
    assert {c.action for c in second} == {"unchanged"}
    stored = (
        cluster.resource("serving.knative.dev/v1", "Service")
        .get(name=HOST_SERVICE, namespace=namespace)
        .to_dict()
    )
    args = stored["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--host-wasm" in args and "--preload" in args


def test_status_of_the_host_lists_its_models(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    host = _host(render_config(cfg, select_clusters(cfg, Overrides()))["edge"].manifests)
    host["status"] = {"url": "http://edgeinfer-wasm-host.ns.example", "conditions": []}
    status = service_status("edge", host)
    assert status.models == ("tenant-a", "tenant-b") and status.role == "primary"


@pytest.mark.slow
def test_cluster_router_routes_each_model_into_the_host(tmp_path: Path) -> None:
    """The gateway's cluster mode against a real WASM host process started as its pod
    would be (``--host-wasm --preload``); Knative's status is a fake (no controller
    runs here) whose address is that process. The image's source tree is this one."""
    cfg = _config(tmp_path, images={"source_root": str(PACKAGES.parents[1])})
    rendered = render_config(cfg, select_clusters(cfg, Overrides()))["edge"].manifests
    host = _host(rendered)
    config_map = next(
        m for m in rendered if m["kind"] == "ConfigMap" and m["metadata"]["name"] == HOST_SERVICE
    )
    pod_config = tmp_path / "pod" / "config.yaml"
    pod_config.parent.mkdir()
    pod_config.write_text(config_map["data"]["config.yaml"])
    port = free_port()
    log = (tmp_path / "host.log").open("wb")
    argv = ["-m", "runtime.worker", "--host-wasm", "--preload", "--config", str(pod_config)]
    proc = subprocess.Popen(
        [sys.executable, *argv, "--port", str(port)],
        stdout=log,
        stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "host did not start"
            time.sleep(0.1)
        host["status"] = {
            "observedGeneration": 1,
            "address": {"url": url},
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        host["metadata"]["generation"] = 1
        status = service_status("edge", host, "1/1")
        router = ClusterRouter(cfg, cfg.clusters, fetch=lambda _: [status], refresh=3600)

        async def run() -> None:
            await router.start()
            try:
                a = router.pool("tenant-a").try_acquire()
                b = router.pool("tenant-b").try_acquire()
                assert a.url == f"{url}/m/tenant-a" and b.url == f"{url}/m/tenant-b"
                async with httpx.AsyncClient() as client:
                    r = await client.post(
                        f"{a.url}/v1/embeddings", json={"model": "tenant-a", "input": "hi"}
                    )
                    assert r.status_code == 200
                    assert len(r.json()["data"][0]["embedding"]) == 384
                    r = await client.post(
                        f"{b.url}/v2/models/tenant-b/infer",
                        json={
                            "inputs": [
                                {
                                    "name": "content",
                                    "shape": [1],
                                    "datatype": "BYTES",
                                    "data": ["#!/bin/sh\necho hi\n"],
                                }
                            ]
                        },
                    )
                    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["shell"]
                router.pool("tenant-a").release(a)
                router.pool("tenant-b").release(b)
            finally:
                await router.stop()

        asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
