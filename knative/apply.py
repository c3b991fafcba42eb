"""Applying rendered manifests to a cluster: server-side apply as field manager
``edgeinfer``, a diff first, pruning and deleting only what edgeinfer owns.

Each object is first applied with ``dryRun=All``: the API server answers with the object
as it would become, which is compared with what is stored to decide *create*, *update*
(with a diff) or *unchanged*. Only then, unless this is a dry run, is it applied for
real, so a second ``apply`` of the same config writes nothing. A field another manager
owns is a 409 :class:`knative.kube.ApplyConflict` naming field and manager; it is taken
over only with ``force``. Objects edgeinfer owns (``app.kubernetes.io/managed-by:
edgeinfer``, same cluster label) that the config no longer renders are pruned only when
asked (``prune``); without it they are reported.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from knative.kube import KINDS, Cluster, kube_errors
from knative.naming import CLUSTER_LABEL, FIELD_MANAGER, MANAGED_BY, MODEL_LABEL, owned_selector
from knative.yamldump import dump
from runtime.errors import KubeError

__all__ = ["Change", "apply_manifests", "delete_owned", "ensure_namespace", "list_owned"]

Action = Literal["create", "update", "unchanged", "prune", "stale", "delete"]

# Metadata the API server writes; never part of a diff.
_VOLATILE_META = (
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
)


@dataclass(frozen=True)
class Change:
    """What happened (or, in a dry run, would happen) to one object."""

    action: Action
    kind: str
    namespace: str
    name: str
    diff: str = ""
    done: bool = False  # False in a dry run, and for stale objects left in place

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def apply_manifests(
    cluster: Cluster,
    manifests: Sequence[dict[str, Any]],
    *,
    dry_run: bool = False,
    prune: bool = False,
    force: bool = False,
    progress: Callable[[Change], None] | None = None,
) -> list[Change]:
    """Server-side apply each manifest (ConfigMaps first), then prune or report owned
    objects the manifests no longer contain. Every object is previewed (``dryRun``)
    before any is written, so a conflict or a refusal leaves the cluster untouched."""
    changes: list[Change] = []
    wanted: set[tuple[str, str, str]] = set()
    previews = [_preview(cluster, manifest, force=force) for manifest in manifests]
    for manifest, change in zip(manifests, previews, strict=True):
        wanted.add((change.kind, change.namespace, change.name))
        if not dry_run and change.action != "unchanged":
            _write(cluster, manifest, force=force)
            change = dataclasses.replace(change, done=True)
        changes.append(change)
        if progress is not None:
            progress(change)
    for obj in list_owned(cluster):
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in wanted:
            continue
        if prune and not dry_run:
            _delete(cluster, obj)
        change = Change(
            "prune" if prune else "stale",
            obj["kind"],
            key[1],
            key[2],
            diff=f"model {obj['metadata'].get('labels', {}).get(MODEL_LABEL, '?')!r} "
            "is no longer in the config",
            done=prune and not dry_run,
        )
        changes.append(change)
        if progress is not None:
            progress(change)
    return changes


def _preview(cluster: Cluster, manifest: dict[str, Any], *, force: bool) -> Change:
    """What applying would do, from a ``dryRun=All`` server-side apply; writes nothing."""
    kind, meta = manifest["kind"], manifest["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    what = f"cluster {cluster.spec.name!r}: {kind} {namespace}/{name}"
    resource = cluster.resource(manifest["apiVersion"], kind)
    with kube_errors(what):
        current = _get(resource, cluster, name, namespace)
        labels = ((current or {}).get("metadata") or {}).get("labels") or {}
        if current is not None and labels.get(MANAGED_BY) != FIELD_MANAGER and not force:
            # Applying would adopt it, and prune/delete would then remove it.
            raise KubeError(
                f"{what} already exists and is not edgeinfer's (no {MANAGED_BY}: "
                f"{FIELD_MANAGER} label): rename the model, remove the object, or rerun "
                "with --force-conflicts to adopt it",
                status=409,
            )
        preview = cluster.client.server_side_apply(
            resource,
            body=manifest,
            namespace=namespace,
            field_manager=FIELD_MANAGER,
            force_conflicts=force or None,
            dry_run="All",
        ).to_dict()
        if current is None:
            action: Action = "create"
            diff = _diff({}, preview)
        else:
            diff = _diff(current, preview)
            action = "update" if diff else "unchanged"
    return Change(action, kind, namespace, name, diff)


def _write(cluster: Cluster, manifest: dict[str, Any], *, force: bool) -> None:
    meta = manifest["metadata"]
    what = f"cluster {cluster.spec.name!r}: {manifest['kind']} {meta['namespace']}/{meta['name']}"
    resource = cluster.resource(manifest["apiVersion"], manifest["kind"])
    with kube_errors(what):
        cluster.client.server_side_apply(
            resource,
            body=manifest,
            namespace=meta["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=force or None,
        )


def ensure_namespace(cluster: Cluster, *, dry_run: bool = False) -> Change | None:
    """Create the cluster's namespace if it is missing (``apply --create-namespace``).
    It is labelled edgeinfer's but never deleted by edgeinfer: other things may live in
    it by then."""
    from kubernetes.dynamic.exceptions import NotFoundError

    name = cluster.spec.namespace
    resource = cluster.resource("v1", "Namespace")
    with kube_errors(f"cluster {cluster.spec.name!r}: namespace {name}"):
        try:
            resource.get(name=name)
            return None
        except NotFoundError:
            pass
        if not dry_run:
            meta = {"name": name, "labels": {MANAGED_BY: FIELD_MANAGER}}
            resource.create(body={"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return Change("create", "Namespace", "-", name, done=not dry_run)


def list_owned(cluster: Cluster, model: str | None = None) -> list[dict[str, Any]]:
    """Every object of the kinds edgeinfer applies that carries its ownership labels
    for this cluster (in the cluster's namespace); kinds the cluster lacks are skipped."""
    selector = owned_selector(model=model, cluster=cluster.spec.name)
    found = []
    for api_version, kind in KINDS:
        if not cluster.has(api_version, kind):
            continue
        resource = cluster.resource(api_version, kind)
        with kube_errors(f"cluster {cluster.spec.name!r}: listing {kind}s"):
            items = resource.get(namespace=cluster.spec.namespace, label_selector=selector)
        for item in items.to_dict().get("items", []):
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            found.append(item)
    return found


def delete_owned(
    cluster: Cluster,
    models: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    progress: Callable[[Change], None] | None = None,
) -> list[Change]:
    """Delete what edgeinfer owns on the cluster (only the given models' if named).
    Objects without edgeinfer's labels are never selected, so never touched."""
    changes = []
    owned = list_owned(cluster)
    # Services first: a ConfigMap goes once nothing mounts it any more.
    owned.sort(key=lambda o: o["kind"] == "ConfigMap")
    for obj in owned:
        labels = obj["metadata"].get("labels") or {}
        if labels.get(CLUSTER_LABEL) != cluster.spec.name:
            continue
        if models is not None and labels.get(MODEL_LABEL) not in models:
            continue
        if not dry_run:
            _delete(cluster, obj)
        meta = obj["metadata"]
        change = Change("delete", obj["kind"], meta["namespace"], meta["name"], done=not dry_run)
        changes.append(change)
        if progress is not None:
            progress(change)
    return changes


def _delete(cluster: Cluster, obj: dict[str, Any]) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    meta = obj["metadata"]
    resource = cluster.resource(obj["apiVersion"], obj["kind"])
    what = (
        f"cluster {cluster.spec.name!r}: deleting {obj['kind']} {meta['namespace']}/{meta['name']}"
    )
    with kube_errors(what):
        try:
            # Background: the object goes at once and the garbage collector removes
            # its dependents (Knative's Configuration, Route, Revisions) after it.
            resource.delete(
                name=meta["name"], namespace=meta["namespace"], propagation_policy="Background"
            )
        except NotFoundError:
            pass  # already gone: deleting is idempotent


def _get(resource: Any, cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        return dict(resource.get(name=name, namespace=namespace).to_dict())
    except NotFoundError:
        return None


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without server-written metadata and status."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE_META}
    out["metadata"] = meta
    return out


def _yaml(obj: dict[str, Any]) -> str:
    return dump(_comparable(obj), sort_keys=True)


def _diff(current: dict[str, Any], preview: dict[str, Any]) -> str:
    """A unified diff of the stored object and the object after the apply."""
    before = _yaml(current) if current else ""
    after = _yaml(preview)
    if before == after:
        return ""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        "stored",
        "after apply",
        n=2,
    )
    return "".join(lines)
