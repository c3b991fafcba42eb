"""Models as Knative Services: rendering, applying, watching, and the gateway's
cluster mode (DESIGN.md; README "Knative"). Names are imported on first use, so
``import knative`` (done by the CLI) stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ApplyConflict": "knative.kube",
    "Change": "knative.apply",
    "ClusterRouter": "knative.router",
    "Finding": "knative.annotations",
    "KubeError": "knative.kube",
    "Rendered": "knative.render",
    "ServiceStatus": "knative.status",
    "apply_manifests": "knative.apply",
    "check_annotations": "knative.annotations",
    "check_placement": "knative.placement_checks",
    "connect": "knative.kube",
    "default_placement": "knative.placement_checks",
    "delete_owned": "knative.apply",
    "placements_from_plan": "knative.placement_checks",
    "read_status": "knative.status",
    "render_config": "knative.targets",
    "render_model": "knative.render",
    "route": "knative.router",
    "scaling_annotations": "knative.annotations",
    "wait_for": "knative.status",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'knative' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
