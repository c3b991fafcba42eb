"""What edgeinfer's Services look like in a cluster: Ready, URL, latest revision,
replicas; and waiting, by watching, until they are Ready or gone.

Knative's controller writes each Service's ``status``: the ``Ready`` condition, ``url``
(external), ``address.url`` (cluster-local), the latest created/ready Revision. Replica
counts live on the Revision (``actualReplicas``/``desiredReplicas``) and are read when the
cluster serves Revisions. A ``Ready`` written for an older generation does not count:
the controller has not yet looked at the latest spec.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from knative.kube import Cluster, kube_errors
from knative.naming import (
    HOSTED_MODELS,
    MODEL_LABEL,
    ROLE_LABEL,
    TIER_LABEL,
    WASM_HOST_LABEL,
    owned_selector,
)

__all__ = ["ServiceStatus", "read_status", "service_status", "wait_for"]

_SERVICE = ("serving.knative.dev/v1", "Service")
_REVISION = ("serving.knative.dev/v1", "Revision")
_SPINAPP = ("core.spinkube.dev/v1alpha1", "SpinApp")


@dataclass(frozen=True)
class ServiceStatus:
    """One Service (or SpinApp) edgeinfer owns, as its status says."""

    cluster: str
    kind: str
    name: str
    model: str
    tier: str
    role: str
    ready: str  # "True", "False" or "Unknown" (Knative's condition status)
    reason: str
    url: str | None
    address: str | None
    revision: str | None
    replicas: str  # "actual/desired", or "-" where unknown
    # The models a multi-model WASM host Service serves (each under /m/{model}/); ()
    # for a one-model Service.
    models: tuple[str, ...] = ()

    @property
    def actual(self) -> int | None:
        """Replicas running now (None: the cluster did not say)."""
        head = self.replicas.split("/")[0]
        return int(head) if head.isdigit() else None

    @property
    def is_ready(self) -> bool:
        return self.ready == "True"


def service_status(cluster: str, obj: dict[str, Any], replicas: str = "-") -> ServiceStatus:
    """The status of one Service or SpinApp object (a dict as the API returns it)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = obj.get("status") or {}
    kind = obj.get("kind", "Service")
    ready, reason = "Unknown", "not reconciled yet"
    current = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    if kind == "SpinApp":
        ready_n = status.get("readyReplicas", 0) or 0
        ready, reason = ("True", "") if ready_n > 0 else ("Unknown", "no ready replica")
        replicas = f"{ready_n}/{(obj.get('spec') or {}).get('replicas', '-')}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status", "Unknown") if current else "Unknown"
            reason = (
                ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
                if current
                else f"generation {meta.get('generation')} not reconciled yet"
            )
    address = (status.get("address") or {}).get("url")
    hosted: tuple[str, ...] = ()
    if labels.get(WASM_HOST_LABEL) == "true":
        listed = (meta.get("annotations") or {}).get(HOSTED_MODELS, "")
        hosted = tuple(n.strip() for n in listed.split(",") if n.strip())
    return ServiceStatus(
        cluster=cluster,
        kind=kind,
        name=meta.get("name", "?"),
        model=labels.get(MODEL_LABEL, "?"),
        tier=labels.get(TIER_LABEL, "?"),
        role=labels.get(ROLE_LABEL, "?"),
        ready=ready,
        reason=reason,
        url=status.get("url"),
        address=address,
        revision=status.get("latestReadyRevisionName") or status.get("latestCreatedRevisionName"),
        replicas=replicas,
        models=hosted,
    )


def read_status(cluster: Cluster, model: str | None = None) -> list[ServiceStatus]:
    """Every Service and SpinApp edgeinfer owns on the cluster, by model and tier."""
    selector = owned_selector(model=model, cluster=cluster.spec.name)
    out = []
    revisions = cluster.resource(*_REVISION) if cluster.has(*_REVISION) else None
    for api_version, kind in (_SERVICE, _SPINAPP):
        if kind == "SpinApp" and not cluster.has(api_version, kind):
            continue
        resource = cluster.resource(api_version, kind)
        with kube_errors(f"cluster {cluster.spec.name!r}: reading {kind}s"):
            items = resource.get(namespace=cluster.spec.namespace, label_selector=selector)
        for obj in items.to_dict().get("items", []):
            obj.setdefault("kind", kind)
            replicas = _replicas(revisions, cluster, obj) if kind == "Service" else "-"
            out.append(service_status(cluster.spec.name, obj, replicas))
    return sorted(out, key=lambda s: (s.model, s.role != "primary", s.tier))


def _replicas(revisions: Any, cluster: Cluster, service: dict[str, Any]) -> str:
    from kubernetes.dynamic.exceptions import ForbiddenError, NotFoundError

    name = (service.get("status") or {}).get("latestReadyRevisionName")
    if revisions is None or not name:
        return "-"
    with kube_errors(f"cluster {cluster.spec.name!r}: reading Revision {name}"):
        try:
            rev = revisions.get(name=name, namespace=cluster.spec.namespace).to_dict()
        except (NotFoundError, ForbiddenError):  # gone, or not ours to read: unknown
            return "-"
    status = rev.get("status") or {}
    actual, desired = status.get("actualReplicas"), status.get("desiredReplicas")
    if actual is None and desired is None:
        return "-"
    return f"{actual if actual is not None else '-'}/{desired if desired is not None else '-'}"


def wait_for(
    cluster: Cluster,
    names: Iterable[str],
    *,
    until: str = "ready",
    timeout: float,
    on_change: Callable[[ServiceStatus | str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> set[str]:
    """Watch the named Services until each is Ready (``until="ready"``) or deleted
    (``until="gone"``), or ``timeout`` seconds pass. Returns the names still not there;
    ``on_change`` sees each status change (a name alone when one is deleted)."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    pending = set(names)
    resource = cluster.resource(*_SERVICE)
    namespace = cluster.spec.namespace
    deadline = clock() + timeout

    def relist() -> str | None:
        """Settle what the list shows now; the version to watch from."""
        listing = resource.get(namespace=namespace, label_selector=owned_selector()).to_dict()
        present = {o["metadata"]["name"]: o for o in listing.get("items", [])}
        for name in list(pending):
            obj = present.get(name)
            if until == "gone" and obj is None:
                pending.discard(name)
            elif until == "ready" and obj is not None:
                if service_status(cluster.spec.name, {**obj, "kind": "Service"}).is_ready:
                    pending.discard(name)
        version: str | None = listing.get("metadata", {}).get("resourceVersion")
        return version

    with kube_errors(f"cluster {cluster.spec.name!r}: watching Services"):
        version = relist()
        while pending and clock() < deadline:
            watcher = watch.Watch()
            events = cluster.client.watch(
                resource,
                namespace=namespace,
                label_selector=owned_selector(),
                resource_version=version,
                timeout=max(1, int(deadline - clock())),
                watcher=watcher,
            )
            try:
                for event in events:
                    obj = event["raw_object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    name = obj.get("metadata", {}).get("name")
                    if name not in pending:
                        continue
                    if event["type"] == "DELETED":
                        if on_change is not None:
                            on_change(name)
                        if until == "gone":
                            pending.discard(name)
                    else:
                        state = service_status(cluster.spec.name, {**obj, "kind": "Service"})
                        if on_change is not None:
                            on_change(state)
                        if until == "ready" and state.is_ready:
                            pending.discard(name)
                    if not pending or clock() >= deadline:
                        watcher.stop()
                        break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the version is too old; list again
                    raise
                version = relist()
    return pending
