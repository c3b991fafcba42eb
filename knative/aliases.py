"""An alias (``runtime.spec.traffic.Alias``) as a Knative Service's traffic split.

Knative splits traffic between the revisions of one Service, so an alias becomes its
own Service, ``<alias>-alias``: each target's revision runs that target's primary-tier
pod (as its own Service renders it on this cluster), named ``<alias>-alias-<hash of the
model and its pod>`` (a changed pod is a new revision), and ``spec.traffic`` sends each
target its weight in percent (rounded so they sum to 100), tagged with the model's
name. The
template is the LAST target's, so a canary rolls out as Knative's docs do it, one apply
per step: ``[stable: 100]`` creates the stable revision; ``[stable: 95, canary: 5]``
adds the canary's and splits; ``[stable: 50, canary: 50]``; ``[canary: 100]``. A
target listed before the last must have been the last (the template) in an earlier
apply, or Knative's route waits for a revision that does not exist.

Where Knative cannot: a target with no primary Service on this cluster (not placed
here, a SpinApp, an ``endpoint:`` model) leaves the alias unrendered there, with a
warning; shadow copies and failover are the gateway's alone (a warning says so).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from knative.annotations import Finding
from knative.naming import MODEL_LABEL, ROLE_LABEL
from knative.render import Rendered
from runtime.spec.traffic import Alias

__all__ = ["alias_service_name", "percents", "render_alias"]


# A revision is "<service>-<6 hex>", and both must be DNS labels (63 characters).
_MAX_SERVICE = 63 - len("-000000")


def alias_service_name(alias: str) -> str:
    """``<alias>-alias``; a long name is cut and suffixed with a hash of the whole."""
    name = f"{alias}-alias"
    if len(name) <= _MAX_SERVICE:
        return name
    digest = hashlib.sha256(alias.encode()).hexdigest()[:6]
    return f"{alias[: _MAX_SERVICE - 14].rstrip('-')}-{digest}-alias"


def percents(weights: Sequence[int]) -> list[int]:
    """Whole percents in proportion to ``weights``, summing to 100 (largest
    remainders get the rounding), as Knative's traffic block requires."""
    total = sum(weights)
    exact = [w * 100 / total for w in weights]
    out = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: out[i] - exact[i])
    for i in by_remainder[: 100 - sum(out)]:
        out[i] += 1
    return out


def _primary(manifests: Sequence[dict[str, Any]], model: str) -> dict[str, Any] | None:
    return next(
        (
            m
            for m in manifests
            if m["kind"] == "Service"
            and m["metadata"]["labels"].get(MODEL_LABEL) == model
            and m["metadata"]["labels"].get(ROLE_LABEL) == "primary"
        ),
        None,
    )


def render_alias(alias: Alias, rendered: Rendered) -> Rendered:
    """The alias's Service on the cluster whose models' manifests are ``rendered``."""
    out = Rendered()
    if alias.shadow is not None or alias.failover:
        out.findings.append(
            Finding(
                alias.name,
                "alias",
                "shadow and failover are done by the gateway only; the Service splits "
                "traffic by weight",
                "warning",
            )
        )
    targets = [t for t in alias.targets if t.weight > 0]
    services = {t.model: _primary(rendered.manifests, t.model) for t in alias.targets}
    missing = [m for m, s in services.items() if s is None]
    if missing:
        out.findings.append(
            Finding(
                alias.name,
                "alias",
                f"not rendered here: {', '.join(missing)} has no Knative Service on this "
                "cluster (Knative splits traffic only between revisions it runs)",
                "warning",
            )
        )
        return out
    name = alias_service_name(alias.name)
    revisions = {}
    for model, service in services.items():
        assert service is not None
        pod = json.dumps([model, service["spec"]["template"]], sort_keys=True).encode()
        revisions[model] = f"{name}-{hashlib.sha256(pod).hexdigest()[:6]}"
    last = alias.targets[-1].model
    last_service = services[last]
    assert last_service is not None
    template = copy.deepcopy(last_service["spec"]["template"])
    template.setdefault("metadata", {})["name"] = revisions[last]
    labels = {**last_service["metadata"]["labels"], MODEL_LABEL: alias.name, ROLE_LABEL: "alias"}
    traffic = [
        {"revisionName": revisions[t.model], "percent": p, "tag": t.model}
        for t, p in zip(targets, percents([t.weight for t in targets]), strict=True)
    ]
    out.manifests.append(
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": last_service["metadata"]["namespace"],
                "labels": labels,
            },
            "spec": {"template": template, "traffic": traffic},
        }
    )
    return out
