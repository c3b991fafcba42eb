"""The WASM tier of a Spin guest as a SpinKube ``core.spinkube.dev/v1alpha1`` SpinApp.

On clusters running SpinKube (the cluster profile's ``wasm.spinkube``), a model listed
there as a Spin app runs its WASM tier under SpinKube's containerd shim instead of the
edgeinfer worker image: the SpinApp's ``image`` is the Spin app's OCI image. SpinKube
does not scale to zero from requests the way Knative does; its replicas are fixed
(``replicas``) unless an HPA/KEDA scaler is attached (``enableAutoscaling``), which is
what edgeinfer sets when the model's rule allows more than one replica.
"""

from __future__ import annotations

from typing import Any

from knative.naming import CONFIG_HASH, service_name
from knative.pod import resources
from runtime.clusters import ClusterSpec
from runtime.placement import Tier
from runtime.spec import ModelSpec, RuntimeName

__all__ = ["is_spin_tier", "render_spinapp"]


def is_spin_tier(spec: ModelSpec, tier: Tier, cluster: ClusterSpec) -> bool:
    """A WASM tier of a model the cluster's SpinKube profile lists as a Spin app."""
    spin = cluster.wasm.spinkube
    return tier.runtime is RuntimeName.WASM and spin is not None and spec.name in spin.models


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
