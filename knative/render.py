"""A model spec plus its placement, rendered as Knative Services (one per tier).

Per model and cluster: a ConfigMap holding the model's spec as the worker in the pod
reads it (file paths rewritten to the model volume), and per tier a
``serving.knative.dev/v1`` Service running ``edgeinfer worker`` for that runtime and
device, with the scaling rule as ``autoscaling.knative.dev/*`` annotations, probes on the
worker's OIP v2 health routes, ``containerConcurrency``, ``timeoutSeconds`` and resources.
GPU tiers get the GPU limit, node selector and tolerations of the cluster profile; WASM
tiers run the CPU image, optionally under a runtime class, or become a SpinKube
``SpinApp`` for Spin guests (``knative.spinapp``). Rendering contacts no cluster; the
only files it reads are WASM package manifests (is the guest a Spin app?).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knative.annotations import Finding, check_annotations, check_pod_limits, scaling_annotations
from knative.delivery import plan_delivery
from knative.naming import (
    CLUSTER_LABEL,
    CONFIG_HASH,
    MODEL_LABEL,
    OWNED,
    ROLE_LABEL,
    TIER_LABEL,
    config_map_name,
    service_name,
)
from knative.placement_checks import check_placement
from knative.pod import CONFIG_MOUNT, PORT, cores, resources, worker_args
from knative.spinapp import is_spin_tier, render_spinapp
from runtime.scaling.keep_alive import keep_alive_rule
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import Device, Placement, Tier, TierRole

__all__ = ["Rendered", "in_shared_host", "render_model"]

_CONFIG_VOLUME = "edgeinfer-config"
_READY_PATH = "/v2/health/ready"
_LIVE_PATH = "/v2/health/live"


@dataclass
class Rendered:
    """Manifests in apply order (ConfigMaps first), and what was found wrong with them."""

    manifests: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def extend(self, other: Rendered) -> None:
        self.manifests.extend(other.manifests)
        self.findings.extend(other.findings)


def render_model(
    spec: ModelSpec, placement: Placement, cluster: ClusterSpec, base_dir: Path
) -> Rendered:
    """The manifests of one model on one cluster: its ConfigMap and one Service (or
    SpinApp) per tier the placement puts on this cluster."""
    out = Rendered()
    for problem in check_placement(spec, placement, cluster):
        out.findings.append(Finding(spec.name, "placement", problem))
    tiers = [
        t
        for t in placement.tiers
        if t.cluster == cluster.name
        # the cluster's one WASM host serves these (knative.wasm_host)
        and not (cluster.wasm.shared_host and in_shared_host(spec, t, cluster, base_dir))
    ]
    if not tiers:
        return out
    delivery = plan_delivery(spec, cluster, base_dir)
    for name, message in delivery.errors:
        out.findings.append(Finding(spec.name, name, message))
    # In a pod, os.cpu_count() is the node's cores, not the replica's: unless the spec
    # says otherwise, the runtime computes on as many threads as the pod requests cores.
    options = delivery.spec.setdefault("options", {})
    options.setdefault("threads", max(1, math.ceil(cores(spec))))
    config_text = yaml.safe_dump({"models": [delivery.spec]}, sort_keys=False)
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    labels = {**OWNED, MODEL_LABEL: spec.name, CLUSTER_LABEL: cluster.name}
    out.manifests.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": config_map_name(spec.name),
                "namespace": cluster.namespace,
                "labels": labels,
            },
            "data": {"config.yaml": config_text},
        }
    )
    config_volume = {"name": _CONFIG_VOLUME, "configMap": {"name": config_map_name(spec.name)}}
    config_mount = {"name": _CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True}
    for tier in tiers:
        tier_labels = {**labels, TIER_LABEL: tier.key, ROLE_LABEL: tier.role.value}
        volumes = [config_volume, *delivery.volumes]
        mounts = [config_mount, *delivery.mounts]
        if is_spin_tier(spec, tier, cluster, base_dir):
            out.manifests.append(
                render_spinapp(spec, tier, cluster, tier_labels, volumes, mounts, config_hash)
            )
            continue
        service = _service(spec, tier, cluster, tier_labels, volumes, mounts, config_hash)
        if placement.reason:  # why the manager (or the default rule) put it here
            service["metadata"]["annotations"] = {"edgeinfer.dev/placement": placement.reason}
        out.manifests.append(service)
        out.findings.extend(_check_service(spec.name, service, cluster))
        flags = _features_needed(service, delivery.feature)
        missing = [
            f"{flag} ({why})" for flag, why in flags.items() if flag not in cluster.knative.features
        ]
        if missing:
            out.findings.append(
                Finding(
                    spec.name,
                    f"{service['metadata']['name']}: spec.template.spec",
                    "needs these flags enabled in knative-serving/config-features: "
                    + ", ".join(missing)
                    + " (or list them under knative.features in the cluster profile)",
                    "warning",
                )
            )
    return out


def in_shared_host(spec: ModelSpec, tier: Tier, cluster: ClusterSpec, base_dir: Path) -> bool:
    """Whether ``tier`` is served by the cluster's shared WASM host (``wasm.shared_host``:
    every WASM tier on it but Spin guests, which stay SpinApps)."""
    return (
        cluster.wasm.shared_host
        and tier.cluster == cluster.name
        and tier.runtime is RuntimeName.WASM
        and not is_spin_tier(spec, tier, cluster, base_dir)
    )


def _service(
    spec: ModelSpec,
    tier: Tier,
    cluster: ClusterSpec,
    labels: dict[str, str],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    config_hash: str,
) -> dict[str, Any]:
    rule = spec.scaling
    if tier.keep_alive_s is not None:
        # The manager's short keep-alive: the stable window (no delay, no retention);
        # the grace after it is the cluster's config-autoscaler setting, not ours.
        rule, _ = keep_alive_rule(rule, tier.keep_alive_s, 0.0)
    # The manager may keep replicas warm on a tier (Tier.min_scale); a bridge is kept
    # warm anyway, or it could not answer while the primary scales from zero.
    warm = tier.min_scale
    if tier.role is TierRole.BRIDGE:
        warm = max(warm or 0, cluster.knative.bridge_min_scale)
    annotations = scaling_annotations(rule, cluster.knative, min_scale=warm)
    annotations[CONFIG_HASH] = config_hash
    pod: dict[str, Any] = {
        "containerConcurrency": rule.container_concurrency,
        "timeoutSeconds": math.ceil(rule.timeout),
        "containers": [_container(spec, tier, cluster, mounts)],
        "volumes": volumes,
    }
    if cluster.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in cluster.images.pull_secrets]
    if tier.device is Device.CUDA:
        gpu = cluster.gpu
        if gpu.node_selector:
            pod["nodeSelector"] = dict(gpu.node_selector)
        if gpu.tolerations:
            pod["tolerations"] = [t.manifest() for t in gpu.tolerations]
        if gpu.runtime_class_name:
            pod["runtimeClassName"] = gpu.runtime_class_name
    elif tier.runtime is RuntimeName.WASM and cluster.wasm.runtime_class_name:
        pod["runtimeClassName"] = cluster.wasm.runtime_class_name
    metadata_labels = dict(labels)
    if cluster.knative.visibility == "cluster-local":
        metadata_labels["networking.knative.dev/visibility"] = "cluster-local"
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(spec.name, tier),
            "namespace": cluster.namespace,
            "labels": metadata_labels,
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {k: labels[k] for k in (MODEL_LABEL, TIER_LABEL, ROLE_LABEL)},
                    "annotations": annotations,
                },
                "spec": pod,
            }
        },
    }


def _container(
    spec: ModelSpec, tier: Tier, cluster: ClusterSpec, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    cuda = tier.device is Device.CUDA
    return {
        "name": "worker",
        "image": cluster.images.cuda if cuda else cluster.images.cpu,
        "imagePullPolicy": cluster.images.pull_policy,
        "args": worker_args(spec, tier),
        "ports": [{"name": "http1", "containerPort": PORT}],
        # periodSeconds unset: Knative's queue-proxy then probes readiness every few
        # milliseconds, so a replica takes traffic as soon as the model has loaded.
        "readinessProbe": {"httpGet": {"path": _READY_PATH}, "successThreshold": 1},
        # Live as soon as it listens, also while a large model loads.
        "livenessProbe": {
            "httpGet": {"path": _LIVE_PATH},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources(spec, tier, cluster),
        "volumeMounts": mounts,
    }


def _check_service(model: str, service: dict[str, Any], cluster: ClusterSpec) -> list[Finding]:
    template = service["spec"]["template"]
    pod = template["spec"]
    name = service["metadata"]["name"]
    found = check_annotations(model, template["metadata"]["annotations"], cluster.knative)
    found += check_pod_limits(
        model, pod.get("containerConcurrency"), pod.get("timeoutSeconds"), cluster.knative
    )
    return [Finding(f.model, f"{name}: {f.field}", f.message, f.severity) for f in found]


def _features_needed(service: dict[str, Any], delivery_flag: str | None) -> dict[str, str]:
    """The ``config-features`` flags Knative's webhook wants for this pod spec."""
    pod = service["spec"]["template"]["spec"]
    flags = {}
    if "nodeSelector" in pod:
        flags["kubernetes.podspec-nodeselector"] = "GPU node selector"
    if "tolerations" in pod:
        flags["kubernetes.podspec-tolerations"] = "GPU node taints"
    if "runtimeClassName" in pod:
        flags["kubernetes.podspec-runtimeclassname"] = f"runtimeClassName {pod['runtimeClassName']}"
    if delivery_flag:
        flags[delivery_flag] = "read-only model volume"
    return flags
