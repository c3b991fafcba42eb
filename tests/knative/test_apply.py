"""Applying to a real kube-apiserver 1.20 with the Knative Service and SpinApp CRDs
(``../shared/tools/kube-apiserver``, see tests/knative/conftest.py): server-side apply
twice, dry-run diffs, a conflicting field manager, objects edgeinfer did not make,
prune and delete, the CLI. The server is built once (4-10 minutes, cached in
``~/.cache/kube-apiserver-1.20``): in CI (``CI=true``) or with
``EDGEINFER_BUILD_KUBE_APISERVER=1`` the fixture builds it; otherwise these tests skip
until ``../shared/tools/kube-apiserver/build.sh`` has run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from knative.apply import apply_manifests, list_owned
from knative.kube import connect
from knative.naming import FIELD_MANAGER
from runtime.errors import ApplyConflict, KubeError
from runtime.spec.clusters import ClusterSpec
from tests.knative.cluster_helpers import MAGIKA, MINILM, manifests, setup, versions

pytestmark = pytest.mark.slow


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
