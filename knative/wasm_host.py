"""One multi-model Knative Service per cluster for the WASM host (issue 14, point 5).

With ``wasm.shared_host: true`` in a cluster's profile, the WASM tiers of every model
(Spin guests excepted: they stay SpinApps) are served by one Service,
``edgeinfer-wasm-host``, running ``edgeinfer worker --host-wasm --preload`` on a
ConfigMap that lists all of those models (file paths rewritten to the pod's mounts as
for any worker). Its pods load every model at start and serve each under
``/m/{model}/``; inside a pod a model at zero holds no instances, so a CPU-only edge
cluster runs many models on one pod. The Service's ``min-scale`` is the largest the
plan asks of any of its models (a bridge tier's warm floor included), its
``max-scale`` the largest of theirs (0 if any is unbounded), its request timeout the
longest, its ``containerConcurrency`` unbounded (models share the pod) and its
memory the sum of theirs.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from knative.annotations import Finding, check_annotations, check_pod_limits, scaling_annotations
from knative.delivery import plan_delivery
from knative.naming import (
    CLUSTER_LABEL,
    CONFIG_HASH,
    HOSTED_MODELS,
    OWNED,
    ROLE_LABEL,
    TIER_LABEL,
    WASM_HOST_LABEL,
)
from knative.pod import CONFIG_MOUNT, PORT
from knative.render import Rendered
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Tier, TierRole
from runtime.spec.scaling import ScalingRule

__all__ = ["HOST_LABEL", "HOST_SERVICE", "host_model_path", "render_wasm_host"]

HOST_SERVICE = "edgeinfer-wasm-host"
HOST_LABEL = WASM_HOST_LABEL
_CONFIG_VOLUME = "edgeinfer-config"


def host_model_path(model: str) -> str:
    """The model's prefix on the host Service's URL."""
    return f"/m/{model}"


def render_wasm_host(
    entries: list[tuple[ModelSpec, Tier]], cluster: ClusterSpec, base_dir: Path
) -> Rendered:
    """The host's ConfigMap and Service for the models (and their WASM tiers) it serves
    on ``cluster``; nothing when there are none."""
    out = Rendered()
    if not entries:
        return out
    specs: list[dict[str, Any]] = []
    volumes: dict[str, dict[str, Any]] = {}
    mounts: dict[str, dict[str, Any]] = {}
    for spec, _ in entries:
        delivery = plan_delivery(spec, cluster, base_dir)
        for name, message in delivery.errors:
            out.findings.append(Finding(spec.name, name, message))
        specs.append(delivery.spec)
        for v in delivery.volumes:
            volumes.setdefault(v["name"], v)
        for m in delivery.mounts:
            mounts.setdefault(m["mountPath"], m)
    config_text = yaml.safe_dump({"models": specs}, sort_keys=False)
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    labels = {**OWNED, HOST_LABEL: "true", CLUSTER_LABEL: cluster.name}
    out.manifests.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": HOST_SERVICE, "namespace": cluster.namespace, "labels": labels},
            "data": {"config.yaml": config_text},
        }
    )
    rule, warm = _host_rule(entries, cluster)
    annotations = scaling_annotations(rule, cluster.knative, min_scale=warm)
    annotations[CONFIG_HASH] = config_hash
    pod: dict[str, Any] = {
        "containerConcurrency": 0,
        "timeoutSeconds": math.ceil(rule.timeout),
        "containers": [_container(entries, cluster, list(mounts.values()))],
        "volumes": [
            {"name": _CONFIG_VOLUME, "configMap": {"name": HOST_SERVICE}},
            *volumes.values(),
        ],
    }
    if cluster.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in cluster.images.pull_secrets]
    if cluster.wasm.runtime_class_name:
        pod["runtimeClassName"] = cluster.wasm.runtime_class_name
    metadata_labels = {**labels, TIER_LABEL: "wasm-cpu", ROLE_LABEL: TierRole.PRIMARY.value}
    if cluster.knative.visibility == "cluster-local":
        metadata_labels["networking.knative.dev/visibility"] = "cluster-local"
    names = ", ".join(spec.name for spec, _ in entries)
    service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": HOST_SERVICE,
            "namespace": cluster.namespace,
            "labels": metadata_labels,
            "annotations": {HOSTED_MODELS: names},
        },
        "spec": {
            "template": {
                "metadata": {"labels": {HOST_LABEL: "true"}, "annotations": annotations},
                "spec": pod,
            }
        },
    }
    out.manifests.append(service)
    found = check_annotations(HOST_SERVICE, annotations, cluster.knative)
    found += check_pod_limits(HOST_SERVICE, 0, pod["timeoutSeconds"], cluster.knative)
    out.findings.extend(found)
    return out


def _host_rule(
    entries: list[tuple[ModelSpec, Tier]], cluster: ClusterSpec
) -> tuple[ScalingRule, int]:
    """One scaling rule for the pod that every model shares, and its warm floor."""
    rules = [spec.scaling for spec, _ in entries]
    warm = 0
    for spec, tier in entries:
        floor = max(spec.scaling.min_scale, tier.min_scale or 0)
        if tier.role is TierRole.BRIDGE:
            floor = max(floor, cluster.knative.bridge_min_scale)
        warm = max(warm, floor)
    unbounded = any(r.max_scale == 0 for r in rules)
    high = 0 if unbounded else max(r.max_scale for r in rules)
    if high:
        warm = min(warm, high)
    rule = ScalingRule.model_validate(
        {
            "min-scale": warm,
            "max-scale": high,
            "initial-scale": max(1 if warm else 0, warm),
            "target": max(r.target for r in rules),
            "window": max(r.window for r in rules),
            "timeout": max(r.timeout for r in rules),
        }
    )
    return rule, warm


def _container(
    entries: list[tuple[ModelSpec, Tier]], cluster: ClusterSpec, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    memory = sum(spec.resources.memory_mib or 0 for spec, _ in entries)
    cpu = max(spec.resources.cpu or 1 for spec, _ in entries)
    resources: dict[str, Any] = {"requests": {"cpu": f"{cpu:g}"}}
    if memory:
        resources["requests"]["memory"] = f"{memory}Mi"
        resources["limits"] = {"memory": f"{memory}Mi"}
    config_mount = {"name": _CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True}
    return {
        "name": "wasm-host",
        "image": cluster.images.cpu,
        "imagePullPolicy": cluster.images.pull_policy,
        "args": [
            "worker",
            "--host-wasm",
            "--preload",
            "--config",
            f"{CONFIG_MOUNT}/config.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
        ],
        "ports": [{"name": "http1", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready"}, "successThreshold": 1},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "volumeMounts": [config_mount, *mounts],
    }
