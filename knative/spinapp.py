"""The WASM tier of a Spin guest as a SpinKube ``core.spinkube.dev/v1alpha1`` SpinApp.

On clusters running SpinKube (the cluster profile's ``wasm.spinkube``), a Spin guest
runs its WASM tier under SpinKube's containerd shim instead of the edgeinfer worker
image. A model is a Spin guest when the profile lists it (``spinkube.models``) or when
its WASM package's manifest (``edgeinfer-wasm.yaml``) says ``abi: spin-llm``. The
SpinApp's ``image`` is the Spin app's OCI image. SpinKube does not scale to zero from
requests the way Knative does; its replicas are fixed (``replicas``) unless an HPA/KEDA
scaler is attached (``enableAutoscaling``), which is what edgeinfer sets when the
model's rule allows more than one replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from knative.naming import CONFIG_HASH, service_name
from knative.pod import resources
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ArtifactFormat, ModelSpec, RuntimeName
from runtime.spec.placement import Tier

__all__ = ["is_spin_tier", "package_abi", "render_spinapp"]


def is_spin_tier(spec: ModelSpec, tier: Tier, cluster: ClusterSpec, base_dir: Path) -> bool:
    """A WASM tier of a Spin guest, on a cluster with SpinKube."""
    spin = cluster.wasm.spinkube
    if tier.runtime is not RuntimeName.WASM or spin is None:
        return False
    return spec.name in spin.models or package_abi(spec, base_dir) == "spin-llm"


def package_abi(spec: ModelSpec, base_dir: Path) -> str | None:
    """The ``abi`` of the model's WASM package manifest, where it is a folder on disk."""
    ref = spec.artifacts.get(ArtifactFormat.WASM)
    if ref is None or ref.startswith(("pkg://", "py://")):
        return None
    folder = Path(ref).expanduser()
    manifest = (folder if folder.is_absolute() else base_dir / folder) / "edgeinfer-wasm.yaml"
    try:
        doc = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    abi = doc.get("abi") if isinstance(doc, dict) else None
    return abi if isinstance(abi, str) else None


def render_spinapp(
    spec: ModelSpec,
    tier: Tier,
    cluster: ClusterSpec,
    labels: dict[str, str],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    config_hash: str,
) -> dict[str, Any]:
    spin = cluster.wasm.spinkube
    assert spin is not None
    autoscale = spec.scaling.max_scale != 1
    body: dict[str, Any] = {
        "executor": spin.executor,
        "image": spin.image.replace("{model}", spec.name),
        "checks": {
            "readiness": {"httpGet": {"path": "/v2/health/ready"}, "periodSeconds": 1},
            "liveness": {"httpGet": {"path": "/v2/health/live"}},
        },
        "resources": resources(spec, tier, cluster),
        "podLabels": {k: v for k, v in labels.items() if k.startswith("edgeinfer.dev/")},
        "podAnnotations": {CONFIG_HASH: config_hash},
        "volumes": volumes,
        "volumeMounts": mounts,
        "variables": [{"name": "model", "value": spec.name}],
    }
    if autoscale:
        body["enableAutoscaling"] = True
    else:
        body["replicas"] = max(spin.replicas, spec.scaling.min_scale)
    if cluster.images.pull_secrets:
        body["imagePullSecrets"] = [{"name": n} for n in cluster.images.pull_secrets]
    return {
        "apiVersion": "core.spinkube.dev/v1alpha1",
        "kind": "SpinApp",
        "metadata": {
            "name": service_name(spec.name, tier),
            "namespace": cluster.namespace,
            "labels": labels,
        },
        "spec": body,
    }
