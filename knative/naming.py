"""Names and ownership labels of what edgeinfer creates in a cluster.

Everything edgeinfer applies carries ``app.kubernetes.io/managed-by: edgeinfer``; prune,
status and delete select on it, so objects someone else made are never touched.
"""

from __future__ import annotations

import hashlib

from runtime.spec.placement import Tier

__all__ = [
    "CLUSTER_LABEL",
    "CONFIG_HASH",
    "FIELD_MANAGER",
    "HOSTED_MODELS",
    "MANAGED_BY",
    "MODEL_LABEL",
    "OWNED",
    "ROLE_LABEL",
    "TIER_LABEL",
    "WASM_HOST_LABEL",
    "config_map_name",
    "owned_selector",
    "service_name",
]

FIELD_MANAGER = "edgeinfer"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWNED = {MANAGED_BY: FIELD_MANAGER}
MODEL_LABEL = "edgeinfer.dev/model"
TIER_LABEL = "edgeinfer.dev/tier"
ROLE_LABEL = "edgeinfer.dev/role"
CLUSTER_LABEL = "edgeinfer.dev/cluster"
CONFIG_HASH = "edgeinfer.dev/config-hash"
# The cluster's one multi-model WASM host Service: its label, and the annotation that
# lists the models it serves (each under /m/{model}/).
WASM_HOST_LABEL = "edgeinfer.dev/wasm-host"
HOSTED_MODELS = "edgeinfer.dev/models"

# Knative names a Service's revisions "<service>-00001" and both must be DNS labels.
_MAX_SERVICE = 63 - len("-00001")


def service_name(model: str, tier: Tier) -> str:
    """``<model>-<runtime>-<device>``, e.g. ``smollm2-llama-cuda``; a long model name is
    cut and suffixed with a hash of the whole, so names stay unique and stable."""
    suffix = "-" + tier.key
    if len(model) + len(suffix) <= _MAX_SERVICE:
        return model + suffix
    digest = hashlib.sha256(model.encode()).hexdigest()[:6]
    keep = _MAX_SERVICE - len(suffix) - len(digest) - 1
    return f"{model[:keep].rstrip('-')}-{digest}{suffix}"


def config_map_name(model: str) -> str:
    """The ConfigMap holding the model's spec, as the worker in the pod reads it."""
    name = f"edgeinfer-{model}"
    if len(name) <= 63:
        return name
    return f"edgeinfer-{model[:45].rstrip('-')}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def owned_selector(model: str | None = None, cluster: str | None = None) -> str:
    """A label selector for objects edgeinfer owns (optionally one model's / cluster's)."""
    parts = [f"{MANAGED_BY}={FIELD_MANAGER}"]
    if model is not None:
        parts.append(f"{MODEL_LABEL}={model}")
    if cluster is not None:
        parts.append(f"{CLUSTER_LABEL}={cluster}")
    return ",".join(parts)
